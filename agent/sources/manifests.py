"""Parsing untrusted manifest text: YAML and JSON into documents with FILE:LINE.

Multi-document YAML, JSON objects or arrays, and `kind: List` wrappers; each
document (and each item of a list) remembers the line it starts on, so that
messages read FILE:LINE.  Every cost is bounded (`Limits`: bytes, tokens,
documents), and nothing a text holds can raise anything but `ManifestError`.
No message made here can span two lines (`shown`).

Knows nothing of files, directories or Gateway API semantics: it is handed
text or bytes (readfile.py reads the files, files.py walks the directory) and
never opens a path: a path only names the text in messages and, by its
suffix, says whether the text is JSON or YAML.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from agent.gcpause import gc_paused

log = logging.getLogger(__name__)


SUFFIXES = (".yaml", ".yml", ".json")
MiB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What the manifests may cost; past a limit a file is refused (named in a
    ManifestError) and its last good parse stays in force.

    Sized on bench/translate.py's 10k TCPRoutes (each with its Service and
    EndpointSlice: 30k documents), the configuration the agent is built for:
    8.6 MiB and 1.42M tokens as YAML (read in 3-4 s, 130 MB), 17 MiB and
    1.19M tokens as JSON indented by 2 (0.5 s).  The directory totals hold
    its 50k-route run (43 MiB, 7.1M tokens, 150k documents as YAML), which a
    scan reads in 26 s and keeps in 700 MB.

    Bytes alone bound nothing useful: 16 MiB of dense flow YAML
    (`{a, a, a, ...`, `[a: 1, a: 1, ...`) took 3-6 GB and up to a minute,
    because libyaml's composer keeps every node of a document, with two marks,
    until the document ends (up to 750 bytes a token).  So the tokens are
    counted first, one pass of str.count: the characters that can start or
    separate a value (`,` `[` `{` `:` `-` `?` and line breaks; JSON: `,` `[`
    `{` `:`).  Their count bounds the values a parser can build (within 2x)
    whatever the text; manifests hold one every 6-8 bytes, dense attacks one
    every 1.5-2.

    Worst cases measured within these limits (parsing paused the cyclic GC):
    one YAML document of 256k tokens: 190 MB while it is parsed; one file of
    4M tokens: 150-230 MB and 0.1-13 s (nested block sequences `- - - 1` are
    the slowest, 3.4 µs a token); a directory: about 1 GB, what its
    50k-route run costs.
    """

    file_bytes: int = 32 * MiB  # JSON of 10k routes: 17 MiB; YAML 8.6 MiB
    file_tokens: int = 4_000_000  # 10k routes: 1.42M (YAML), 1.19M (JSON)
    # A document's nodes all live until it is parsed; a Kubernetes object is at
    # most 1.5 MiB (etcd), a few thousand tokens; a `kind: List` of 1.8k routes fits.
    document_tokens: int = 256_000
    file_documents: int = 100_000  # 10k routes: 30k documents
    files: int = 10_000  # stops a listing of millions of (tiny) files
    total_bytes: int = 128 * MiB  # 50k routes: 43 MiB as YAML, 85 MiB as JSON
    total_tokens: int = 16_000_000  # 50k routes: 7.1M (YAML), 6.0M (JSON)
    total_documents: int = 500_000  # 50k routes: 150k documents


DEFAULT_LIMITS = Limits()


def shown(text: str) -> str:
    """`text` (a path, a parser's message) fit for a one-line message: a file
    name may hold a newline or a terminal escape, repr() shows it instead."""
    return text if text.isprintable() else repr(text)


class ManifestError(Exception):
    """A file that cannot be read or parsed; str() is 'FILE:LINE: message',
    always one line whatever the file's name."""

    def __init__(self, path: str | os.PathLike[str], line: int | None, message: str) -> None:
        name = shown(os.fspath(path))
        where = f"{name}:{line}" if line is not None else name
        text = message if message.isprintable() else repr(message)[1:-1]
        super().__init__(f"{where}: {text}")
        self.path = os.fspath(path)
        self.line = line


# libyaml's parser when PyYAML was built with it (Debian's is): 20x faster than
# the pure-Python one, which took 7 s for 10k routes.
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[valid-type,misc]
    """Safe YAML without implicit timestamps: creationTimestamp stays the string
    the API server would send, not a datetime."""


_Loader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}

_YAML_TOKENS = ",[{:-?\n\r\x85\u2028\u2029"  # \x85 \u2028 \u2029: YAML 1.1 line breaks
_JSON_TOKENS = ",[{:"
# libyaml ends a document at `---` or `...` at the start of a line, whatever it
# is inside of (a flow collection: an error; a block scalar: its end).  Seeing
# fewer markers than libyaml does (breaks other than \n) only overestimates.
_DOCUMENT_MARKER = re.compile(r"^(?:---|\.\.\.)(?=[ \t\r\n]|\Z)", re.MULTILINE)


def _count_tokens(
    text: str, start: int = 0, end: int | None = None, *, is_json: bool = False
) -> int:
    """The characters of `text[start:end]` that can start or separate a value:
    a bound on the values a parser can build from it (see `Limits`)."""
    stop = len(text) if end is None else end
    return 1 + sum(text.count(c, start, stop) for c in (_JSON_TOKENS if is_json else _YAML_TOKENS))


class _Documents:
    """The documents of one file, as they are found, with 'FILE:LINE' sources."""

    def __init__(self, path: str, limit: int) -> None:
        self.name = shown(path)
        self.path = path
        self.limit = limit
        self.items: list[tuple[object, str]] = []

    def source(self, line: int) -> str:
        return f"{self.name}:{line}"

    def add(self, doc: object, line: int) -> None:
        if len(self.items) >= self.limit:
            raise ManifestError(self.path, None, f"more than {self.limit} documents")
        self.items.append((doc, self.source(line)))

    def expand(self, doc: Any, line: int, item_lines: list[int] | None = None) -> None:
        """Unwrap `kind: List` and arrays into their items; `item_lines`, where
        known, are the lines of the items of the outermost one."""
        if isinstance(doc, list):
            lines = item_lines if item_lines is not None and len(item_lines) == len(doc) else None
            for i, item in enumerate(doc):
                self.expand(item, lines[i] if lines is not None else line)
        elif (
            isinstance(doc, dict)
            and doc.get("kind") == "List"
            and isinstance(doc.get("items"), list)
        ):
            items = doc["items"]
            lines = item_lines if item_lines is not None and len(item_lines) == len(items) else None
            for i, item in enumerate(items):
                self.add(item, lines[i] if lines is not None else line)
        elif doc is not None:
            self.add(doc, line)


def parse_text(text: str, path: str, limits: Limits = DEFAULT_LIMITS) -> list[tuple[object, str]]:
    """Documents of one file with their 'FILE:LINE' source; raises ManifestError
    and nothing else."""
    return _parse(text, path, limits)[0]


def _parse(text: str, path: str, limits: Limits) -> tuple[list[tuple[object, str]], int]:
    """The documents and the token count of one file's text."""
    is_json = path.endswith(".json")
    tokens = _count_tokens(text, is_json=is_json)
    if tokens > limits.file_tokens:
        raise ManifestError(
            path,
            None,
            f"more than {limits.file_tokens} tokens ({tokens}): too dense for a manifest",
        )
    docs = _Documents(path, limits.file_documents)
    # Millions of long-lived objects and no cycles (a recursive alias makes
    # one, collected later): see agent/gcpause.py.
    try:
        with gc_paused():
            if is_json:
                _parse_json(text, path, docs)
            else:
                if tokens > limits.document_tokens:
                    _check_yaml_documents(text, path, limits.document_tokens)
                _parse_yaml(text, path, docs)
    except ManifestError:
        raise
    except RecursionError:
        raise ManifestError(path, None, "document is nested too deeply") from None
    except MemoryError:
        raise ManifestError(path, None, "out of memory while parsing") from None
    except Exception as exc:  # the file boundary: a YAML constructor's ValueError, ...
        detail = str(exc)[:200]
        raise ManifestError(
            path, None, f"cannot be parsed: {type(exc).__name__}: {detail}"
        ) from None
    return docs.items, tokens


def _check_yaml_documents(text: str, path: str, limit: int) -> None:
    """Refuse a YAML document of more than `limit` tokens before libyaml builds
    its nodes.  A document of n characters has at most n + 1 tokens, so only
    the long ones are counted."""
    start = 0
    for end in [*(m.start() for m in _DOCUMENT_MARKER.finditer(text)), len(text)]:
        if end - start >= limit and (tokens := _count_tokens(text, start, end)) > limit:
            raise ManifestError(
                path,
                _line_at(text, start),
                f"more than {limit} tokens in one YAML document ({tokens}): split it "
                "into documents (---)",
            )
        start = end


class _NestedTooDeeply(Exception):
    def __init__(self, offset: int) -> None:
        super().__init__(offset)
        self.offset = offset


def _parse_yaml(text: str, path: str, docs: _Documents) -> None:
    loader = _Loader(text)
    line: int | None = None
    try:
        while loader.check_node():
            node = loader.get_node()
            if node is None:
                continue
            line = node.start_mark.line + 1
            item_lines = _yaml_item_lines(node)
            docs.expand(loader.construct_document(node), line, item_lines)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = mark.line + 1 if mark is not None else None
        raise ManifestError(path, at, str(exc.problem or exc.context or "invalid YAML")) from None
    except yaml.YAMLError as exc:
        raise ManifestError(path, None, str(exc).partition("\n")[0]) from None
    except RecursionError:
        raise ManifestError(path, line, "document is nested too deeply") from None
    finally:
        loader.dispose()


def _yaml_item_lines(node: yaml.Node) -> list[int] | None:
    """The lines of a sequence's items, or of a mapping's `items:` (a List)."""
    if isinstance(node, yaml.SequenceNode):
        return [item.start_mark.line + 1 for item in node.value]
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if (
                isinstance(key, yaml.ScalarNode)
                and key.value == "items"
                and isinstance(value, yaml.SequenceNode)
            ):
                return [item.start_mark.line + 1 for item in value.value]
    return None


_DECODER = json.JSONDecoder()
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


def _parse_json(text: str, path: str, docs: _Documents) -> None:
    """A top-level array's items, or a List object's items, each at its line
    (json.loads gives no positions, so those two levels are read by hand with
    the decoder's own pieces); anything else at the line where it starts."""
    try:
        parsed = _json_with_offsets(text)
    except _NestedTooDeeply as exc:
        raise ManifestError(
            path, _line_at(text, exc.offset), "document is nested too deeply"
        ) from None
    if parsed is None:  # not valid JSON: json.loads says where and why
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ManifestError(path, exc.lineno, exc.msg) from None
        docs.expand(value, 1)
        return
    value, start, offsets = parsed
    lines = _lines_at(text, offsets)
    docs.expand(value, _line_at(text, start), lines)


def _skip_space(text: str, offset: int) -> int:
    match = _JSON_SPACE.match(text, offset)
    return match.end() if match is not None else offset


def _line_at(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def _lines_at(text: str, offsets: list[int]) -> list[int]:
    lines, line, last = [], 1, 0
    for offset in offsets:
        line += text.count("\n", last, offset)
        last = offset
        lines.append(line)
    return lines


def _json_with_offsets(text: str) -> tuple[object, int, list[int]] | None:
    """(value, offset of the value, offsets of its items); None if `text` is
    not valid JSON."""
    try:
        start = _skip_space(text, 0)
        value: object
        offsets: list[int]
        if text.startswith("[", start):
            value, offsets, end = _json_array(text, start)
        elif text.startswith("{", start):
            value, offsets, end = _json_object(text, start)
        else:
            value, end = _json_value(text, start)
            offsets = []
    except (ValueError, IndexError):  # JSONDecodeError is a ValueError
        return None
    if _skip_space(text, end) != len(text):
        return None
    return value, start, offsets


def _json_value(text: str, offset: int) -> tuple[object, int]:
    try:
        return _DECODER.raw_decode(text, offset)
    except RecursionError:
        raise _NestedTooDeeply(offset) from None


def _json_array(text: str, offset: int) -> tuple[list[object], list[int], int]:
    items: list[object] = []
    offsets: list[int] = []
    pos = _skip_space(text, offset + 1)
    if text.startswith("]", pos):
        return items, offsets, pos + 1
    while True:
        value, end = _json_value(text, pos)
        items.append(value)
        offsets.append(pos)
        pos = _skip_space(text, end)
        if text.startswith("]", pos):
            return items, offsets, pos + 1
        if not text.startswith(",", pos):
            raise ValueError("expected , or ]")
        pos = _skip_space(text, pos + 1)


def _json_object(text: str, offset: int) -> tuple[dict[str, object], list[int], int]:
    obj: dict[str, object] = {}
    items: list[object] | None = None
    offsets: list[int] = []
    pos = _skip_space(text, offset + 1)
    if text.startswith("}", pos):
        return obj, offsets, pos + 1
    while True:
        if not text.startswith('"', pos):
            raise ValueError("expected a key")
        key, pos = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
        pos = _skip_space(text, pos)
        if not text.startswith(":", pos):
            raise ValueError("expected :")
        pos = _skip_space(text, pos + 1)
        value: object
        if key == "items" and text.startswith("[", pos):
            items, offsets, pos = _json_array(text, pos)
            value = items
        else:
            value, pos = _json_value(text, pos)
        obj[key] = value
        pos = _skip_space(text, pos)
        if text.startswith("}", pos):
            break
        if not text.startswith(",", pos):
            raise ValueError("expected , or }")
        pos = _skip_space(text, pos + 1)
    # A later "items" key wins, as in json.loads: then the offsets are not its.
    return obj, offsets if items is not None and obj.get("items") is items else [], pos + 1


@dataclass(frozen=True)
class Manifest:
    """One file's good parse: its documents, and what it weighs (`Limits`)."""

    docs: list[tuple[object, str]]
    size: int
    tokens: int


def parse_bytes(raw: bytes, path: Path, limits: Limits = DEFAULT_LIMITS) -> Manifest:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise ManifestError(path, line, f"not UTF-8: {exc.reason}") from None
    docs, tokens = _parse(text, str(path), limits)
    return Manifest(docs, len(raw), tokens)
