"""How a string from a manifest is written into an HAProxy 2.6 configuration.

Every value that comes from a Gateway API object passes through exactly one of
the functions below before it reaches the configuration text.  Each either
returns a representation whose meaning is the literal value, or raises
`Unrepresentable`; the renderer then drops the rule that carried the value and
reports why.  The rules (HAProxy 2.6 configuration manual, §2.2):

- A configuration word is written in *strong quotes* ('...'): inside, nothing
  is interpreted -- no backslash escapes, no `$VAR` expansion, no `#` comment,
  no word split.  A single quote, which strong quotes cannot hold, is written
  outside them as `\\'` (`it's` -> `'it'\\''s'`).  A line feed or carriage
  return has no strongly quoted form, and no manifest value needs one: control
  characters (other than tab) and non-ASCII are refused outright, so no value
  can end a configuration line.
- Strings that HAProxy reads as *log-format* (set-header values, redirect
  locations, path replacements) also interpret `%`: it is doubled.
- ACL patterns are literal once the word is unquoted, provided the flag parser
  is told where flags end: the renderer always writes `--` before patterns, so a
  value such as `-i` or `-f /etc/passwd` is a pattern, not a flag.  ACLs are
  always *named* (`acl NAME fetch -m str -- 'value'`), never anonymous
  (`{ ... }`), so a value such as `}` cannot close a condition.
- Names inside sample-fetch arguments (`req.fhdr(NAME)`, `urlp(NAME)`) go
  through a second parser that treats `,` `(` `)` quotes and backslashes
  specially: only HTTP token characters without `'` are accepted there.
- Regular expressions are compiled by PCRE2 in HAProxy; they are compiled here
  with the same library before they are written, so a pattern HAProxy would
  reject never reaches the configuration (a bad regex would otherwise fail the
  whole configuration check).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import re

# Printable ASCII plus tab: what may appear inside a strongly quoted word.
_WORD_SAFE = re.compile(r"^[\t -~]*$")
# RFC 9110 token characters without the single quote (see module docstring).
_FETCH_ARG_NAME = re.compile(r"^[A-Za-z0-9!#$%&*+.^_`|~-]+$")
HOSTNAME = re.compile(r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
# A URL path as a redirect or rewrite target: absolute, no query, no fragment,
# no whitespace.
_TARGET_PATH = re.compile(r"^/[!-~]*$")
MAX_VALUE = 4096


class Unrepresentable(ValueError):
    """A manifest value that cannot be written into the configuration safely."""


def word(value: str) -> str:
    """`value` as one configuration word whose meaning is exactly `value`."""
    if len(value) > MAX_VALUE:
        raise Unrepresentable(f"value longer than {MAX_VALUE} characters")
    if not _WORD_SAFE.fullmatch(value):
        raise Unrepresentable(f"value {_show(value)} contains control or non-ASCII characters")
    return "'" + value.replace("'", "'\\''") + "'"


def logformat(value: str) -> str:
    """`value` as a log-format word that expands to exactly `value`."""
    return word(value.replace("%", "%%"))


def fetch_arg_name(name: str) -> str:
    """A header or query parameter name for use inside `fetch(NAME)`."""
    if not _FETCH_ARG_NAME.fullmatch(name) or len(name) > 256:
        raise Unrepresentable(f"name {_show(name)} cannot be used in a sample fetch argument")
    return name


def hostname(name: str, *, wildcard: bool = True) -> str:
    """A DNS hostname (optionally `*.suffix`), validated; returned unquoted-safe."""
    if len(name) > 253 or not HOSTNAME.fullmatch(name) or (not wildcard and name.startswith("*")):
        raise Unrepresentable(f"hostname {_show(name)} is not a valid DNS name")
    return name


def target_path(path: str) -> str:
    """A path used as a redirect or rewrite target."""
    if len(path) > 1024 or not _TARGET_PATH.fullmatch(path) or "?" in path or "#" in path:
        raise Unrepresentable(f"path {_show(path)} is not a plain absolute URL path")
    return path


def regex_literal(text: str) -> str:
    """`text` as a PCRE pattern that matches exactly `text`."""
    return "".join(c if c.isalnum() or c in "/_" else "\\" + c for c in text)


def anchored_regex(pattern: str) -> str:
    """A user regular expression as a full-match PCRE2 pattern, or Unrepresentable.

    The pattern must compile on its own (so its groups are balanced) and
    wrapped in `^(?:...)$`; constructs that could escape the wrapper (`\\Q`
    quoting, `(*VERB)` start options, extended-mode comments) are refused.
    """
    word(pattern)  # printable ASCII only
    for bad in ("\\Q", "\\E", "(*", "(?x", "(?#"):
        if bad in pattern:
            raise Unrepresentable(f"regular expression uses {bad!r}, which is not supported")
    if re.search(r"\(\?[a-zA-Z-]*x", pattern):
        raise Unrepresentable("regular expression uses extended mode, which is not supported")
    wrapped = f"^(?:{pattern})$"
    for candidate in (pattern, wrapped):
        error = pcre2_error(candidate)
        if error is not None:
            raise Unrepresentable(f"regular expression {_show(pattern)}: {error}")
    return wrapped


def _show(value: str) -> str:
    shown = value if len(value) <= 60 else value[:57] + "..."
    return repr(shown)


# -- PCRE2, the library HAProxy compiles its regular expressions with ----------------


@functools.cache
def _pcre2() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("pcre2-8") or "libpcre2-8.so.0"
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.pcre2_compile_8.restype = ctypes.c_void_p
    lib.pcre2_compile_8.argtypes = [
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.c_uint32,
        ctypes.POINTER(ctypes.c_int),
        ctypes.POINTER(ctypes.c_size_t),
        ctypes.c_void_p,
    ]
    lib.pcre2_code_free_8.restype = None
    lib.pcre2_code_free_8.argtypes = [ctypes.c_void_p]
    lib.pcre2_get_error_message_8.restype = ctypes.c_int
    lib.pcre2_get_error_message_8.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t]
    return lib


@functools.lru_cache(maxsize=4096)
def pcre2_error(pattern: str) -> str | None:
    """PCRE2's compile error for `pattern`, or None when it compiles.

    Without libpcre2 (HAProxy itself would not run) Python's `re` stands in.
    """
    lib = _pcre2()
    data = pattern.encode()
    if lib is None:
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            return str(exc)
        return None
    code = ctypes.c_int(0)
    offset = ctypes.c_size_t(0)
    compiled = lib.pcre2_compile_8(
        data, len(data), 0, ctypes.byref(code), ctypes.byref(offset), None
    )
    if compiled:
        lib.pcre2_code_free_8(compiled)
        return None
    buf = ctypes.create_string_buffer(256)
    lib.pcre2_get_error_message_8(code.value, buf, len(buf))
    return f"{buf.value.decode(errors='replace')} at offset {offset.value}"
