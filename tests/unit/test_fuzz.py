"""Fuzz: broken manifest text never breaks the reader, broken documents never
break translate, and what translate produces renders into configuration that
says only what the renderers mean to say.

Seeds: the upstream Gateway API conformance manifests (../shared/gateway-api,
`{GATEWAY_CLASS_NAME}` made ours, the suite's Secrets added, a static VIP per
Gateway and EndpointSlices per Service, as a cluster would have), and the
repository's examples/ and tests/golden/*/ manifests.

1. Reader: mutated TEXT (YAML and JSON; byte flips, truncation, random unicode
   with control characters and surrogates, deep nesting, huge numbers, anchors,
   aliases, tags, duplicate keys, tabs) through `parse_text`, or from a file's
   bytes, then `build_snapshot(check_fields=True)`: returns, or raises
   `ManifestError` naming the file (and a line inside it); nothing else.
2. translate: mutated STRUCTURES (values of another type, huge and negative
   numbers, long and hostile strings, addresses that are not addresses, odd
   wildcards, removed and unknown keys, duplicated items) never make it raise;
   it is deterministic and independent of the order of the documents, and its
   output document serialises.
3. Renderers: every desired state renders (HAProxy: `render` never raises, a
   value it cannot write becomes a `Problem`; nftables: `normalise` raises at
   most its documented `RenderError`, which the reconciler reports per
   frontend, and the text translation never raises `TextError`), and the text
   holds only lines of the renderers' own vocabulary: every value from input is
   a strongly quoted word (agent/proxy/escape.py), ASCII, on its own line.
   The HAProxy renderer is also fed its own inputs with hostile values the
   model would have refused: it must not rely on the model's validation.

Bounded: about 60 s on 2 cores; the example counts below were measured for it.
`GATEWAYLB_FUZZ_EXAMPLES=N` runs N examples per test, `=20x` twenty times the
default.  `derandomize=True`: CI runs the same examples every time.  The counts
and times are printed at the end of the module.

Every bug found keeps its minimal input at the bottom of the file: a plain
test once fixed, a strict xfail while open (the fix turns it into a failure).
The fuzz tests count an example that fails with an open bug's exact signature
(`KNOWN_BUGS`) instead of stopping at it, and fail on anything else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import re
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import CONTROLLER, gateway_class, secret
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.dataplane.frontends import FrontendError, FrontendSpec, canonical_ip, normalise
from agent.dataplane.nft import plan as nft
from agent.dataplane.nft import render as nft_render
from agent.filters import (
    HeaderModifier,
    RouteFilter,
)
from agent.model.routes import (
    L4Route,
)
from agent.model.snapshot import InvalidObject, LoadProblem, Snapshot, build_snapshot, parse_object
from agent.output import dump, translation_document
from agent.proxy import escape
from agent.proxy.render import RenderedConfig, render
from agent.refs import ObjectRef, Subject
from agent.sources.files import ManifestError, parse_text, read_manifest
from agent.state import (
    Backend,
    BackendSet,
    DesiredState,
    FrontendSource,
    HTTPMatch,
    HTTPRouteEntry,
    L4Frontend,
    L7Listener,
    VirtualHost,
)
from agent.translate.core import translate
from tests.unit.test_properties import _get, _paths

REPO = Path(__file__).resolve().parents[2]
# shared/ sits beside the repository (in CI too): ../shared/gateway-api.
CONFORMANCE = REPO.parent / "shared" / "gateway-api" / "conformance"
CLASS = "gatewaylb"
RUN_DIR = "/run/gatewaylb"
# In every hostile string: outside a comment or a sanitised name, it must only
# ever be seen inside a quoted word of the HAProxy configuration.
MARK = "gwlbfuzz"

Doc = dict[str, Any]
Path_ = tuple[str | int, ...]
PATH_DEPTH = 14  # how deep mutations reach into a document


# -- budget ------------------------------------------------------------------------------


def _examples(default: int) -> int:
    raw = os.environ.get("GATEWAYLB_FUZZ_EXAMPLES", "").strip().lower()
    if not raw:
        return default
    if raw.endswith("x"):
        return max(1, round(default * float(raw[:-1])))
    return max(1, int(raw))


def fuzz_settings(default: int) -> settings:
    return settings(
        max_examples=_examples(default),
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
            HealthCheck.large_base_example,
            HealthCheck.filter_too_much,
        ],
    )


# test name -> [examples run, seconds]
_STATS: dict[str, list[float]] = {}


def _count(name: str, started: float) -> None:
    entry = _STATS.setdefault(name, [0, 0.0])
    entry[0] += 1
    entry[1] += time.perf_counter() - started


# -- bugs already found ------------------------------------------------------------------
#
# A fuzz test that hits a bug it already reported would fail on every run and
# stop exploring, so each known bug has a signature (exception type, message,
# a file in the traceback): an example that fails with exactly it is counted,
# not failed, and any other failure still fails.  Each bug also has a strict
# xfail regression with its minimal input at the bottom of the file: the fix
# turns that into a failure, and then its signature here is to be removed.


@dataclasses.dataclass(frozen=True)
class KnownBug:
    exc_type: type[BaseException]
    message: str  # a regular expression searched in str(exception)
    raised_in: str  # "file:function" of the innermost frame (the file's path ending)


KNOWN_BUGS: dict[str, KnownBug] = {}
_KNOWN_HITS: Counter[str] = Counter()


def known_bug(exc: BaseException) -> str | None:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return None
    innermost = f"{frames[-1].filename}:{frames[-1].name}"
    for name, bug in KNOWN_BUGS.items():
        path, _, function = bug.raised_in.partition(":")
        if (
            isinstance(exc, bug.exc_type)
            and re.search(bug.message, str(exc))
            and frames[-1].filename.endswith(path)
            and (not function or innermost.endswith(f":{function}"))
        ):
            return name
    return None


@contextlib.contextmanager
def tolerating_known_bugs() -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        name = known_bug(exc)
        if name is None:
            raise
        _KNOWN_HITS[name] += 1


@pytest.fixture(scope="module", autouse=True)
def _report_counts(pytestconfig: pytest.Config) -> Iterator[None]:
    started = time.perf_counter()
    yield
    reporter = pytestconfig.pluginmanager.get_plugin("terminalreporter")
    capture = pytestconfig.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        return
    total = time.perf_counter() - started
    with capture.global_and_fixture_disabled():
        reporter.write_line("")
        for name, (n, seconds) in sorted(_STATS.items()):
            reporter.write_line(
                f"test_fuzz: {name}: {int(n)} examples, {seconds:.1f} s in the code under test"
            )
        for name, hits in sorted(_KNOWN_HITS.items()):
            reporter.write_line(f"test_fuzz: known bug {name}: hit by {hits} examples")
        reporter.write_line(f"test_fuzz: {total:.1f} s in all")


# -- seeds -------------------------------------------------------------------------------


def _substitute(text: str) -> str:
    return text.replace("{GATEWAY_CLASS_NAME}", CLASS).replace(
        "{GATEWAY_CONTROLLER_NAME}", CONTROLLER
    )


def _conformance_files() -> list[Path]:
    base = sorted((CONFORMANCE / "base").glob("*.yaml"))
    tests = sorted((CONFORMANCE / "tests").glob("*.yaml"))
    return base + tests


def _repo_dirs() -> list[Path]:
    dirs = sorted(p for p in (REPO / "examples").iterdir() if p.is_dir())
    dirs += sorted(p for p in (REPO / "tests" / "golden").iterdir() if p.is_dir())
    return dirs


def _manifests(directory: Path) -> list[Path]:
    return sorted(p for p in directory.rglob("*") if p.suffix in (".yaml", ".yml", ".json"))


@functools.cache
def text_seeds() -> tuple[tuple[str, str], ...]:
    """(name, YAML text) of every seed file."""
    paths = _conformance_files() + [p for d in _repo_dirs() for p in _manifests(d)]
    seeds = [(str(p.relative_to(p.parents[2])), p.read_text()) for p in paths]
    assert seeds, "no seed manifests found"
    return tuple(seeds)


@functools.cache
def json_seeds() -> tuple[tuple[str, str], ...]:
    """The same documents as JSON arrays (indented: line-based mutations matter)."""
    out = []
    for name, text in text_seeds():
        docs = [doc for doc, _ in parse_text(text, name + ".yaml")]
        out.append((name, json.dumps(docs, indent=2)))
    return tuple(out)


def _service_slices(docs: list[Doc]) -> list[Doc]:
    """The EndpointSlices a cluster would have for every Service: two ready
    IPv4 endpoints and one IPv6 one, on every port's target."""
    out = []
    for n, svc in enumerate(d for d in docs if d.get("kind") == "Service"):
        meta, spec = svc.get("metadata", {}), svc.get("spec", {})
        ports = []
        for p in spec.get("ports", []):
            target = p.get("targetPort", p.get("port"))
            port: Doc = {"port": target if isinstance(target, int) else 3000}
            port["protocol"] = p.get("protocol", "TCP")
            if "name" in p:
                port["name"] = p["name"]
            ports.append(port)
        for family, addresses in (
            ("IPv4", [f"10.{n // 250}.{n % 250}.1", f"10.{n // 250}.{n % 250}.2"]),
            ("IPv6", [f"fd00::{n:x}:1"]),
        ):
            out.append(
                {
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {
                        "name": f"{meta.get('name', 'svc')}-{family.lower()}",
                        "namespace": meta.get("namespace", "default"),
                        "labels": {"kubernetes.io/service-name": meta.get("name", "svc")},
                    },
                    "addressType": family,
                    "endpoints": [{"addresses": [a]} for a in addresses],
                    "ports": ports,
                }
            )
    return out


def _read_docs(path: Path) -> list[Doc]:
    docs = parse_text(_substitute(path.read_text()), str(path))
    return [d for d, _ in docs if isinstance(d, dict)]


@functools.cache
def worlds() -> dict[str, str]:
    """name -> the world's documents as JSON text (a cheap deep copy each time)."""
    out: dict[str, str] = {}
    paths = _conformance_files()
    base = [p for p in paths if p.parent.name == "base"]
    suite_secrets = [
        secret(name, namespace=ns)
        for ns, name in (
            ("gateway-conformance-web-backend", "certificate"),
            ("gateway-conformance-infra", "tls-validity-checks-certificate"),
            ("gateway-conformance-infra", "tls-checks-certificate"),
            ("gateway-conformance-infra", "tls-passthrough-checks-certificate"),
            ("gateway-conformance-app-backend", "tls-passthrough-checks-certificate"),
            ("gateway-conformance-infra", "tls-terminate-checks-certificate"),
        )
    ]
    base_docs = [d for p in base for d in _read_docs(p)]
    for test in (p for p in paths if p.parent.name == "tests"):
        docs = [gateway_class(CLASS), *base_docs, *_read_docs(test), *suite_secrets]
        n = 0
        for doc in docs:
            spec = doc.get("spec")
            if (
                doc.get("kind") == "Gateway"
                and isinstance(spec, dict)
                and not spec.get("addresses")
            ):
                n += 1
                spec["addresses"] = [{"type": "IPAddress", "value": f"198.51.100.{n}"}]
        docs += _service_slices(docs)
        out[f"conformance/{test.stem}"] = json.dumps(docs)
    for directory in _repo_dirs():
        docs = [d for p in _manifests(directory) for d in _read_docs(p)]
        if not any(d.get("kind") == "EndpointSlice" for d in docs):
            docs += _service_slices(docs)
        out[str(directory.relative_to(REPO))] = json.dumps(docs)
    assert out, "no seed worlds found"
    return out


def world(name: str) -> list[Doc]:
    docs: list[Doc] = json.loads(worlds()[name])
    return docs


def _sources(docs: list[Any]) -> list[tuple[object, str]]:
    return [(d, f"doc-{i}") for i, d in enumerate(docs)]


@functools.cache
def translated(name: str) -> DesiredState:
    """The desired state of an unmutated world."""
    return translate(build_snapshot(_sources(world(name)), check_fields=True), CONTROLLER).desired


# -- text mutations -----------------------------------------------------------------------

SPECIAL_CHARS = [
    "\x00",
    "\x07",
    "\x1b[31m",
    "\x7f",
    "\x85",
    "\t",
    "\r",
    "\r\n",
    "\x0b",
    "\x0c",
    "\u2028",
    "\u2029",
    "\ufeff",
    "\ufffe",
    "\ud800",
    "\udfff",
    "\U0010ffff",
    "\u202e",
    "é",
    "😀",
]
BAD_UTF8 = [
    b"\xef\xbb\xbf",  # a BOM (in the middle, too)
    b"\xff\xfe",
    b"\xc3",  # a lead byte without its continuation
    b"\x80",
    b"\xed\xa0\x80",  # a surrogate, UTF-8 encoded
    b"\xc0\xaf",  # overlong
    b"\xf4\x90\x80\x80",  # beyond U+10FFFF
    b"\x00",
]
HUGE_NUMBERS = [
    "9" * 20,
    "9" * 4300,
    "9" * 4301,
    "-" + "9" * 10_000,
    "1e999",
    "-1e999",
    "1e-99999",
    "4." + "3" * 5000,
    "0x" + "f" * 5000,
    "0o" + "7" * 5000,
    "0b" + "1" * 20_000,
    "1_000_000",
    "1:30:00",
    "1:" + "5" * 5000,
    ".inf",
    "-.inf",
    ".nan",
    "NaN",
    "Infinity",
    "-Infinity",
    "-0",
    "0.0000000000000000000001",
]
DEPTHS = [2, 50, 500, 998, 999, 1000, 1001, 5000, 50_000, 200_000]
LAUGHS = "\n".join(
    [
        "lol0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
        *(f"lol{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]" for i in range(1, 9)),
    ]
)


def _position(draw: st.DrawFn, length: int) -> int:
    return draw(st.integers(min_value=0, max_value=length))


def _line_starts(text: str) -> list[int]:
    return [0, *(m.end() for m in re.finditer("\n", text))]


@st.composite
def byte_mutations(draw: st.DrawFn, data: bytes) -> bytes:
    buf = bytearray(data)
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        op = draw(st.sampled_from(["flip", "set", "insert", "delete", "bad_utf8"]))
        i = _position(draw, len(buf))
        if op == "flip" and i < len(buf):
            buf[i] ^= 1 << draw(st.integers(min_value=0, max_value=7))
        elif op == "set" and i < len(buf):
            buf[i] = draw(st.integers(min_value=0, max_value=255))
        elif op == "insert":
            buf[i:i] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            buf[i : i + draw(st.integers(min_value=1, max_value=64))] = b""
        else:
            buf[i:i] = draw(st.sampled_from(BAD_UTF8))
    return bytes(buf)


@st.composite
def truncations(draw: st.DrawFn, data: bytes) -> bytes:
    """A half-saved file: cut anywhere (inside a multi-byte character too),
    sometimes with the start of the next save appended."""
    cut = draw(st.integers(min_value=0, max_value=len(data)))
    out = data[:cut]
    if draw(st.booleans()):
        out += data[: draw(st.integers(min_value=0, max_value=min(len(data), 200)))]
    return out


@st.composite
def unicode_mutations(draw: st.DrawFn, text: str) -> str:
    chars = st.one_of(
        st.sampled_from(SPECIAL_CHARS),
        # Every category, surrogates (Cs) and controls (Cc) included.
        st.text(st.characters(codec=None, categories=None), min_size=1, max_size=6),
    )
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        i = _position(draw, len(text))
        replace = draw(st.integers(min_value=0, max_value=2))
        text = text[:i] + draw(chars) + text[i + replace :]
    return text


@st.composite
def nesting_mutations(draw: st.DrawFn, text: str, fmt: str) -> str:
    depth = draw(st.one_of(st.sampled_from(DEPTHS), st.integers(min_value=1, max_value=3000)))
    kind = draw(st.sampled_from(["list", "object"]))
    opener = "[" if kind == "list" else ('{"a": ' if fmt == "json" else "{a: ")
    closer = "]" if kind == "list" else "}"
    nest = opener * depth + ("1" + closer * depth if draw(st.booleans()) else "")
    where = draw(st.sampled_from(["whole", "value", "insert"]))
    if where == "whole":
        return nest
    if where == "value":
        # As the value of a key: `key: [[[...` in YAML, `"key": [[[...` in JSON.
        matches = list(re.finditer(r'(:\s)("[^"\n]*"|[^\s\n][^\n]*)', text))
        if matches:
            m = draw(st.sampled_from(matches))
            return text[: m.start(2)] + nest + text[m.end(2) :]
    i = _position(draw, len(text))
    return text[:i] + nest + text[i:]


@st.composite
def number_mutations(draw: st.DrawFn, text: str) -> str:
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        number = draw(st.sampled_from(HUGE_NUMBERS))
        digits = list(re.finditer(r"(?<![\w.-])\d+(?![\w.])", text))
        if digits and draw(st.integers(min_value=0, max_value=3)):
            m = draw(st.sampled_from(digits))
            text = text[: m.start()] + number + text[m.end() :]
        else:
            # A new key (YAML) or a replaced string value (JSON).
            starts = _line_starts(text)
            i = starts[draw(st.integers(min_value=0, max_value=len(starts) - 1))]
            text = text[:i] + f"{number}: {number}\n" + text[i:]
    return text


@st.composite
def yaml_syntax_mutations(draw: st.DrawFn, text: str) -> str:
    """Duplicate keys, tabs, anchors and aliases (recursive ones, laughs),
    tags, merge keys, directives and document markers."""
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        lines = text.split("\n")
        i = draw(st.integers(min_value=0, max_value=max(0, len(lines) - 1)))
        line = lines[i] if lines else ""
        op = draw(
            st.sampled_from(
                [
                    "dup_line",
                    "tab",
                    "anchor",
                    "alias",
                    "recursive",
                    "laughs",
                    "tag",
                    "merge",
                    "directive",
                    "marker",
                    "flow",
                ]
            )
        )
        if op == "dup_line":
            lines.insert(i, line)
        elif op == "tab":
            lines[i] = re.sub(r"^( +)", lambda m: "\t" * draw(st.integers(1, 3)), line)
            if lines[i] == line:
                lines[i] = line.replace(" ", "\t", 1)
        elif op == "anchor" and ": " in line:
            lines[i] = line.replace(": ", ": &a ", 1)
            j = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            if ": " in lines[j]:
                key = lines[j].split(": ", 1)[0]
                lines[j] = f"{key}: *a"
        elif op == "alias" and ": " in line:
            target = draw(st.sampled_from(["*a", "*undefined", "*", "&", "&a *a", "!!str *a"]))
            lines[i] = line.split(": ", 1)[0] + ": " + target
        elif op == "recursive":
            if ": " in line:
                lines[i] = line.split(": ", 1)[0] + ": &r [*r, {k: *r}]"
            else:
                lines.insert(i, "&r [*r]")
        elif op == "laughs":
            indent = re.match(r"^\s*", line)
            pad = indent.group(0) if indent else ""
            lines[i:i] = [pad + row for row in LAUGHS.split("\n")]
        elif op == "tag" and ": " in line:
            tag = draw(
                st.sampled_from(
                    [
                        "!!binary",
                        "!!python/object/apply:os.system",
                        "!!python/name:os.system",
                        "!!set",
                        "!!omap",
                        "!!timestamp",
                        "!!int",
                        "!!float",
                        "!!map",
                        "!!seq",
                        "!custom",
                        "!<tag:yaml.org,2002:str>",
                    ]
                )
            )
            key, value = line.split(": ", 1)
            lines[i] = f"{key}: {tag} {value}"
        elif op == "merge":
            lines.insert(i, line[: len(line) - len(line.lstrip())] + "<<: *a")
        elif op == "directive":
            lines.insert(
                i, draw(st.sampled_from(["%YAML 1.1", "%YAML 9.9", "%TAG ! tag:x,1:", "%FOO"]))
            )
        elif op == "marker":
            lines.insert(i, draw(st.sampled_from(["---", "...", "--- |", "--- !!set", "---\t"])))
        else:  # flow style, half-open
            lines[i] = line.replace(": ", ": {", 1)
        text = "\n".join(lines)
    return text


@st.composite
def json_syntax_mutations(draw: st.DrawFn, text: str) -> str:
    """Duplicate keys, trailing commas, comments, single quotes, JSON5-isms."""
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        op = draw(
            st.sampled_from(
                ["dup_key", "trailing_comma", "comment", "single_quote", "bom", "tab", "dup_line"]
            )
        )
        if op == "dup_key":
            braces = [m.end() for m in re.finditer(r"\{", text)]
            if braces:
                i = draw(st.sampled_from(braces))
                key = draw(st.sampled_from(["kind", "metadata", "spec", "apiVersion", "name"]))
                value = draw(st.sampled_from(['"Gateway"', "null", "{}", "[]", "1"]))
                text = text[:i] + f'"{key}": {value}, ' + text[i:]
        elif op == "trailing_comma":
            ends = [m.start() for m in re.finditer(r"[\]}]", text)]
            if ends:
                i = draw(st.sampled_from(ends))
                text = text[:i] + "," + text[i:]
        elif op == "comment":
            i = draw(st.sampled_from(_line_starts(text)))
            text = text[:i] + draw(st.sampled_from(["// c\n", "/* c */", "# c\n"])) + text[i:]
        elif op == "single_quote":
            text = text.replace('"', "'", draw(st.integers(min_value=1, max_value=8)))
        elif op == "bom":
            text = "\ufeff" + text
        elif op == "tab":
            text = text.replace("  ", "\t", draw(st.integers(min_value=1, max_value=20)))
        else:
            lines = text.split("\n")
            i = draw(st.integers(min_value=0, max_value=len(lines) - 1))
            lines.insert(i, lines[i])
            text = "\n".join(lines)
    return text


FAMILIES = ("bytes", "truncate", "unicode", "nesting", "numbers", "syntax")


@st.composite
def mutated_text(draw: st.DrawFn, fmt: str, family: str) -> tuple[str, str | bytes]:
    """(file name, mutated content): bytes for the byte-level families (read
    from a file, UTF-8 decoding included), str for the others (`parse_text`)."""
    seeds = json_seeds() if fmt == "json" else text_seeds()
    name, text = draw(st.sampled_from(seeds))
    path = f"{name}.{fmt}"
    if family == "bytes":
        return path, draw(byte_mutations(text.encode()))
    if family == "truncate":
        return path, draw(truncations(text.encode()))
    if family == "unicode":
        return path, draw(unicode_mutations(text))
    if family == "nesting":
        return path, draw(nesting_mutations(text, fmt))
    if family == "numbers":
        return path, draw(number_mutations(text))
    syntax = json_syntax_mutations if fmt == "json" else yaml_syntax_mutations
    return path, draw(syntax(text))


# -- the reader's contract ----------------------------------------------------------------


_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


def read_contract(path: str, content: str | bytes) -> Snapshot | None:
    """Read `content` as the file `path` would be, check the contract, and
    return the snapshot (None when the file was refused with ManifestError)."""
    text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
    # YAML 1.1 breaks lines at \r, NEL, LS and PS too.
    lines = len(_LINE_BREAK.findall(text)) + 1
    with tempfile.TemporaryDirectory() as tmp:
        where = path
        try:
            if isinstance(content, bytes):
                file = Path(tmp) / Path(path).name
                file.write_bytes(content)
                where = str(file)
                docs = read_manifest(file).docs
            else:
                docs = parse_text(content, path)
            snapshot = build_snapshot(docs, check_fields=True)
        except ManifestError as exc:
            assert exc.path == where
            assert str(exc).startswith(f"{where}:"), str(exc)
            assert exc.line is None or 1 <= exc.line <= lines + 1, (exc.line, lines)
            return None
    sources = set()
    for doc, source in docs:
        assert doc is not None
        assert source.startswith(f"{where}:"), source
        line = int(source.rsplit(":", 1)[1])
        assert 1 <= line <= lines, (line, lines)
        sources.add(source)
    assert isinstance(snapshot, Snapshot)
    for problem in (*snapshot.problems, *snapshot.warnings):
        assert problem.source in sources, problem
        assert isinstance(problem.message, str) and problem.message
    return snapshot


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("fmt", ["yaml", "json"])
@fuzz_settings(300)
@given(data=st.data())
def test_reader_returns_or_raises_manifest_error(
    fmt: str, family: str, data: st.DataObject
) -> None:
    path, content = data.draw(mutated_text(fmt, family), label="file")
    started = time.perf_counter()
    with tolerating_known_bugs():
        read_contract(path, content)
    _count(f"reader[{fmt}-{family}]", started)


def test_unmutated_seeds_read_cleanly_and_json_reads_as_yaml() -> None:
    """The starting points parse, and both spellings give the same documents."""
    for (name, text), (_, as_json) in zip(text_seeds(), json_seeds(), strict=True):
        yaml_docs = [d for d, _ in parse_text(text, name + ".yaml")]
        json_docs = [d for d, _ in parse_text(as_json, name + ".json")]
        assert yaml_docs == json_docs, name
        assert read_contract(name + ".yaml", text) is not None


# -- structure mutations ------------------------------------------------------------------

HOSTILE_STRINGS = [
    f"{MARK}\nhttp-request deny {MARK}",
    f"{MARK}\r\nuse_backend evil {MARK}",
    f"{MARK}' http-request deny '{MARK}",
    f'{MARK}" http-request deny "{MARK}',
    f"{MARK} }} || {{ always_true }} {MARK}",
    f"}} {MARK}",
    "}",
    "{",
    f"{MARK} %[src] %[req.hdr(cookie)] %{MARK}",
    f"%[{MARK}]",
    f'{MARK} ${{HOME}} $HOME "${MARK}"',
    f"{MARK}\\' \\\\ \\n \\x41 {MARK}",
    f"{MARK} # not a comment",
    f"-i {MARK}",
    f"-f /etc/passwd {MARK}",
    f"/{MARK}\n/x",
    f"/{MARK}/%[src]",
    f"/{MARK}/${{x}}",
    f"/{MARK}'",
    f"/{MARK} x",
    f"/{MARK}?q=1#f",
    f"/{MARK}\\",
    f"{MARK}.example.com\n",
    f"{MARK}\x00",
    f"{MARK}\t{MARK}",
    f"{MARK}é",
    f"{MARK}\ud800",
    f"{MARK}\u2028http-request deny",
    f"^(?:{MARK})$)|(.*",
    f"{MARK}\\Q",
    f"(*ACCEPT){MARK}",
    f"(?x){MARK} # c",
]
NOT_IPS = [
    "999.1.1.1",
    "1.2.3",
    "1.2.3.4.5",
    "010.1.1.1",
    "0x7f.0.0.1",
    " 192.0.2.1",
    "192.0.2.1 ",
    "192.0.2.1/24",
    "::ffff:192.0.2.1",
    "2001:db8::g",
    ":::",
    "localhost",
    "",
]
# IPv6 addresses with a zone: `ipaddress` takes them, HAProxy and nft do not.
SCOPED_IPS = ["fe80::1%eth0", "fe80::1%1", "::1%lo"]
ODD_HOSTNAMES = [
    "*",
    "**.example.com",
    "*example.com",
    "a.*.example.com",
    "example.*",
    "*.",
    ".example.com",
    "a..example.com",
    "*.*.example.com",
    "EXAMPLE.COM",
    "example.com.",
    "a_b.example.com",
    "xn--bcher-kva.example",
    "-a.example.com",
    "a" * 64 + ".example.com",
    ("a" * 63 + ".") * 4 + "com",
    "192.0.2.1",
    "[::1]",
    "example.com:80",
]
ODD_STRINGS = [
    "",
    " ",
    "x" * 100_000,
    "1h",
    "0s",
    "999999999h",
    "1.5s",
    "-1s",
    "1d",
    "GET\n",
    "get",
    "CONNECT",
    "(",
    ".*{99999}",
    "a{1,}",
    "PathPrefix",
    "Exact",
    "RegularExpression",
    "ReplacePrefixMatch",
    "ReplaceFullPath",
    "Passthrough",
    "Terminate",
    "HTTP",
    "HTTPS",
    "TLS",
    "TCP",
    "UDP",
    "kubernetes.io/h2c",
    "https",
    "ftp",
]
ODD_NUMBERS = [0, -1, 1, 65535, 65536, 2**31, 2**32, 2**63, -(2**63), 10**30, 0.5, -0.0, 1e308]


class Nested(list[Any]):
    """A list nested `depth` levels deep, with a short repr (Hypothesis prints
    falsifying examples, and a plain repr would overflow the stack)."""

    def __init__(self, depth: int, leaf: Any) -> None:
        node: Any = leaf
        for _ in range(depth - 1):
            node = [node]
        super().__init__([node])
        self.depth = depth

    def __repr__(self) -> str:
        return f"Nested({self.depth})"


scalar_values = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from(ODD_NUMBERS),
    st.integers(),
    st.floats(),
    st.sampled_from(HOSTILE_STRINGS + NOT_IPS + SCOPED_IPS + ODD_HOSTNAMES + ODD_STRINGS),
    st.text(max_size=12),
)
weird_values = st.one_of(
    scalar_values,
    st.lists(scalar_values, max_size=3),
    st.dictionaries(st.sampled_from(["name", "value", "type", "port", "x"]), scalar_values),
    st.builds(Nested, st.sampled_from([2, 3, 100, 3000]), scalar_values),
)
# Values of the right type more often than not, so the object stays valid and
# the value reaches the renderers.
string_values = st.sampled_from(
    HOSTILE_STRINGS + NOT_IPS + SCOPED_IPS + ODD_HOSTNAMES + ODD_STRINGS
)


def _parent(doc: Any, path: Path_) -> tuple[Any, str | int]:
    return _get(doc, path[:-1]), path[-1]


KINDS = ["Gateway", "HTTPRoute", "GRPCRoute", "TCPRoute", "UDPRoute", "TLSRoute", "Service"]
# Where the strings the renderers write come from.
RENDERED = frozenset(
    {"filters", "matches", "hostnames", "hostname", "timeouts", "addresses", "listeners"}
)
OPS = (
    "replace",
    "string",
    "rendered",
    "rendered",
    "rendered",
    "delete",
    "unknown_key",
    "dup_item",
    "nest",
    "dup_doc",
    "retype",
)


@st.composite
def mutated_worlds(draw: st.DrawFn) -> tuple[str, list[Any]]:
    name = draw(st.sampled_from(sorted(worlds())))
    docs: list[Any] = world(name)
    # Gateway API objects are where the semantics are: mutate them most.
    interesting = [
        i
        for i, d in enumerate(docs)
        if isinstance(d, dict) and str(d.get("apiVersion", "")).startswith("gateway.")
    ] or list(range(len(docs)))
    for _ in range(draw(st.integers(min_value=1, max_value=6))):
        if draw(st.integers(min_value=0, max_value=3)):
            i = draw(st.sampled_from(interesting))
        else:
            i = draw(st.integers(min_value=0, max_value=len(docs) - 1))
        doc = docs[i]
        op = draw(st.sampled_from(OPS))
        if op == "dup_doc":
            docs.insert(draw(st.integers(min_value=0, max_value=len(docs))), json_copy(doc))
            continue
        if not isinstance(doc, dict):
            continue
        if op == "retype":
            doc["kind"] = draw(st.sampled_from(KINDS))
            continue
        paths = _paths(doc, PATH_DEPTH)
        if op in ("string", "rendered"):
            paths = [p for p in paths if isinstance(_get(doc, p), str)]
        if op == "rendered":
            paths = [p for p in paths if RENDERED & set(p)] or paths
        elif op == "dup_item":
            paths = [p for p in paths if isinstance(p[-1], int)]
        elif op == "unknown_key":
            paths = [(), *(p for p in paths if isinstance(_get(doc, p), dict))]
        if not paths:
            continue
        path = draw(st.sampled_from(paths))
        if op == "unknown_key":
            target = _get(doc, path)
            target[draw(st.sampled_from(["x", "unknownField", "status", "spec", "$ref"]))] = draw(
                weird_values
            )
            continue
        container, key = _parent(doc, path)
        if op == "replace":
            container[key] = draw(weird_values)
        elif op in ("string", "rendered"):
            container[key] = draw(string_values)
        elif op == "delete":
            del container[key]
        elif op == "dup_item":
            container.insert(key, json_copy(container[key]))
        else:  # nest
            container[key] = draw(st.sampled_from([[container[key]], [[container[key]]]]))
    return name, docs


def json_copy(value: Any) -> Any:
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError, RecursionError):
        return value


# -- translate's contract -----------------------------------------------------------------


def translate_contract(
    docs: list[Any], formats: tuple[str, ...] = ("json",)
) -> tuple[Snapshot, DesiredState, dict[str, Any]]:
    snapshot = build_snapshot(_sources(docs), check_fields=True)
    result = translate(snapshot, CONTROLLER)
    document = translation_document(snapshot, result)
    # What `translate -o json|yaml` prints and `run --status-file` writes
    # (YAML only where asked: its pure-Python emitter costs more than translate).
    for fmt in formats:
        dump(document, fmt).encode("utf-8")
    json.dumps(document, allow_nan=False)
    desired = result.desired
    keys = Counter(f.key for f in desired.l4)
    assert all(n == 1 for n in keys.values()), [k for k, n in keys.items() if n > 1]
    for f in desired.l4:
        assert f.vip in desired.vips
        assert 1 <= f.port <= 65535
        assert all(type(b.weight) is int and b.weight >= 0 for b in f.backends)
        assert type(f.reject_weight) is int and f.reject_weight >= 0
    for listener in desired.l7:
        assert set(listener.vips) <= set(desired.vips)
    return snapshot, desired, document


@fuzz_settings(500)
@given(mutated_worlds())
def test_translate_never_raises_on_mutated_documents(case: tuple[str, list[Any]]) -> None:
    started = time.perf_counter()
    _, docs = case
    with tolerating_known_bugs():
        translate_contract(docs, formats=("json", "yaml"))
    _count("translate", started)


def _identity(doc: object) -> object:
    parsed = parse_object(doc, "")
    if parsed is None or isinstance(parsed, LoadProblem):
        return object()  # never equal: documents without identity are all kept
    kind = parsed.kind if isinstance(parsed, InvalidObject | L4Route) else type(parsed).__name__
    return (kind, parsed.meta.namespace, parsed.meta.name)


def _comparable(document: dict[str, Any]) -> dict[str, Any]:
    # Problems are listed in input order (the order of the files): compare as a multiset.
    return {**document, "problems": sorted(document.get("problems", []))}


def check_deterministic(docs: list[Any], rnd: Any) -> None:
    # The first definition of a name wins, so only the winners are shuffled;
    # each keeps its source name.
    seen: set[object] = set()
    winners: list[tuple[object, str]] = []
    for source in _sources(docs):
        ident = _identity(source[0])
        if ident not in seen:
            seen.add(ident)
            winners.append(source)
    snapshot = build_snapshot(winners, check_fields=True)
    first = translation_document(snapshot, translate(snapshot, CONTROLLER))
    assert translation_document(snapshot, translate(snapshot, CONTROLLER)) == first
    rebuilt = build_snapshot(winners, check_fields=True)
    assert translation_document(rebuilt, translate(rebuilt, CONTROLLER)) == first
    shuffled = list(winners)
    rnd.shuffle(shuffled)
    other = build_snapshot(shuffled, check_fields=True)
    document = translation_document(other, translate(other, CONTROLLER))
    assert _comparable(document) == _comparable(first)


@fuzz_settings(250)
@given(mutated_worlds(), st.randoms(use_true_random=False))
def test_translate_is_deterministic_and_independent_of_document_order(
    case: tuple[str, list[Any]], rnd: Any
) -> None:
    started = time.perf_counter()
    _, docs = case
    with tolerating_known_bugs():
        check_deterministic(docs, rnd)
    _count("deterministic", started)


# -- the renderers' contract --------------------------------------------------------------

# What a strongly quoted word may hold (escape.py's rule, as a full match).
_PRINTABLE = re.compile(r"[\t -~]*")
_HEADER = re.compile(r"(global|defaults|(frontend|backend) [A-Za-z0-9_.:-]+)")
_KEYWORDS = {
    "global": {
        "stats",
        "nbthread",
        "hard-stop-after",
        "mworker-max-reloads",
        "tune.ssl.default-dh-param",
        "ssl-default-bind-options",
    },
    "defaults": {"mode", "timeout"},
    "frontend": {
        "mode",
        "bind",
        "option",
        "acl",
        "http-request",
        "http-response",
        "tcp-request",
        "use_backend",
    },
    "backend": {
        "mode",
        "balance",
        "timeout",
        "retries",
        "retry-on",
        "server",
        "http-request",
        "http-response",
    },
}
# Unquoted words are the renderer's own: keywords, fetches, numbers, names,
# addresses.  No quote, backslash, `$`, `%`, `#` or whitespace.
_UNQUOTED = re.compile(r"[A-Za-z0-9_.:/,()\[\]{}!=@|+-]+")
_BACKEND_NAME = re.compile(r"be_[A-Za-z0-9_.:-]+")
# Log-format expansions the renderer itself writes; any other `%` is doubled.
# The renderer's own expansions (the Host, the path and query, a CORS origin
# it matched); any other % must be escaped.
_OWN_EXPANSIONS = re.compile(r"%%|%\[var\(txn\.(?:host|cors)\)\]|%\[pathq\]")
_ADDR = re.compile(r"(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-f:.]+\]):(\d+)")


@dataclasses.dataclass
class Word:
    value: str  # after unquoting
    quoted: bool
    raw: str


def haproxy_words(line: str) -> list[Word]:
    """HAProxy 2.6's word split of one line (configuration manual §2.2), for
    the subset the renderer may write: strong quotes and `\\'` only."""
    words: list[Word] = []
    value: list[str] = []
    raw_start = -1
    quoted = False
    i = 0
    while i < len(line):
        c = line[i]
        if c in " \t":
            if raw_start >= 0:
                words.append(Word("".join(value), quoted, line[raw_start:i]))
                value, quoted, raw_start = [], False, -1
            i += 1
            continue
        if raw_start < 0:
            raw_start = i
        if c == "'":
            end = line.find("'", i + 1)
            assert end != -1, f"unterminated quote in {line!r}"
            value.append(line[i + 1 : end])
            quoted = True
            i = end + 1
        elif c == "\\":
            assert line[i + 1 : i + 2] == "'", f"backslash outside a quote in {line!r}"
            value.append("'")
            quoted = True
            i += 2
        else:
            assert c not in '"#$%', f"{c!r} outside a quote in {line!r}"
            value.append(c)
            i += 1
    if raw_start >= 0:
        words.append(Word("".join(value), quoted, line[raw_start:]))
    return words


def _check_condition_blocks(words: list[Word], line: str) -> None:
    """Anonymous ACLs (HAProxy's acl.c: after `{`, the block ends at the first
    word that reads `}`, quoted or not): braces balanced and never nested, no
    quoted word in a condition outside a block (a name, `or`, `{`), none that
    reads `}` inside one, and patterns after `--` (so none is read as a flag)."""
    depth = 0
    condition = after_match = after_dashes = False
    for w in words:
        if w.quoted:
            if condition:
                assert depth == 1 and w.value != "}", f"a quoted brace or term in {line!r}"
            if after_match:
                assert after_dashes, f"a pattern before '--' in {line!r}"
            continue
        if w.value in ("if", "unless"):
            condition = True
        elif w.value == "{":
            assert condition and depth == 0, f"a brace out of place in {line!r}"
            depth, after_match, after_dashes = 1, False, False
        elif w.value == "}":
            assert depth == 1, f"unbalanced braces in {line!r}"
            depth = 0
        elif w.value == "-m":
            after_match = True
        elif w.value == "--":
            after_dashes = True
    assert depth == 0, f"unclosed brace in {line!r}"


def _check_logformat(words: list[Word], line: str) -> None:
    values: list[Word] = []
    if len(words) >= 4 and words[1].value in ("set-header", "add-header"):
        values = [words[3]]
    elif len(words) >= 3 and words[1].value == "set-path":
        values = [words[2]]
    elif len(words) >= 4 and words[1].value in ("replace-path", "redirect"):
        values = [words[3]]
    for w in values:
        assert w.quoted, f"log-format value not quoted in {line!r}"
        stripped = _OWN_EXPANSIONS.sub("", w.value)
        assert "%" not in stripped, f"a bare % in a log-format value in {line!r}"


def check_haproxy(rc: RenderedConfig) -> None:
    text = rc.text
    assert re.fullmatch(r"[\t\n -~]*", text), "a control or non-ASCII character"
    lines = text.split("\n")
    assert lines[0] == "# generated by gatewaylb: do not edit"
    assert lines[-1] == ""
    section = ""
    for line in lines[1:-1]:
        if not line:
            continue
        if not line.startswith(" "):
            assert _HEADER.fullmatch(line), f"not a section header: {line!r}"
            section = line.split(" ", 1)[0]
            continue
        assert section, f"a line outside any section: {line!r}"
        assert line.startswith("    ") and not line[4:5].isspace(), f"indentation: {line!r}"
        body = line[4:]
        if body.startswith("#"):
            continue  # a comment: everything to the end of line (names, quoted hostnames)
        words = haproxy_words(body)
        assert words[0].value in _KEYWORDS[section] and not words[0].quoted, line
        for w in words:
            if not w.quoted:
                assert _UNQUOTED.fullmatch(w.raw), f"unquoted {w.raw!r} in {line!r}"
                if MARK in w.raw:
                    assert _BACKEND_NAME.fullmatch(w.raw), f"input outside a quote: {line!r}"
            else:
                assert _PRINTABLE.fullmatch(w.value), line
        _check_condition_blocks(words, line)
        _check_logformat(words, line)
        if words[0].value == "server" and words[1].value == "terminate":
            # The renderer's own hop to a terminating frontend (TLSRouteModeMixed).
            sock = re.escape(RUN_DIR) + r"/fe_\d+_[0-9a-f]+\.sock"
            assert re.fullmatch("unix@" + sock, words[2].value), line
            assert [w.value for w in words[3:]] == ["send-proxy-v2"], line
        elif words[0].value == "server":
            m = _ADDR.fullmatch(words[2].value)
            assert m and 1 <= int(m.group(3)) <= 65535, line
            assert words[3].value == "weight" and 0 <= int(words[4].value) <= 256, line
        if words[0].value == "bind" and not words[1].quoted:
            m = _ADDR.fullmatch(words[1].value)
            assert m and 1 <= int(m.group(3)) <= 65535, line
    for name, content in rc.files.items():
        assert not name.startswith("/") and ".." not in name, name
        if name.endswith(".txt"):  # a crt-list: "PATH [SNI filter]" lines
            for entry in content.decode("ascii").splitlines():
                cert, *sni = entry.split(" ")
                assert re.fullmatch(re.escape(RUN_DIR) + r"/certs/[0-9a-f]{32}\.pem", cert)
                assert len(sni) <= 1 and all(escape.HOSTNAME.fullmatch(h) for h in sni), entry
    for problem in rc.problems:
        assert isinstance(problem.subject, Subject) and isinstance(problem.reason, str)


_NFT_COMMAND = re.compile(
    r"(add|flush|delete) (table|chain|rule|element|set|map) inet [A-Za-z0-9_-]+( |$)"
)
_NFT_COMMENT = re.compile(r'comment "([^"]*)"')


def check_nft_lines(lines: list[str]) -> None:
    if not lines:
        return
    for physical in "\n".join(lines).split("\n"):
        assert re.fullmatch(r"[\t -~]*", physical), physical
        assert physical.count('"') % 2 == 0, physical
        for comment in _NFT_COMMENT.findall(physical):
            assert nft_render._SAFE_COMMENT(comment), physical
        stripped = physical.strip("\t")
        assert (
            _NFT_COMMAND.match(physical)
            or re.fullmatch(r"table inet [A-Za-z0-9_-]+ \{", physical)
            or re.fullmatch(r"\tchain fe_[0-9a-f_tu46]+ \{", physical)
            or physical in ("\t}", "}")
            or (physical.startswith("\t\t") and not stripped.startswith(("table", "chain")))
        ), physical
        for m in re.finditer(r"dnat ip6? to (\S+)", physical):
            addr = m.group(1)
            host, _, port = addr.rpartition(":")
            assert 1 <= int(port) <= 65535, physical
            assert canonical_ip(host.strip("[]")) == host.strip("[]"), physical


def nft_specs(desired: DesiredState) -> dict[nft.Key, FrontendSpec]:
    """What the nftables reconciler would program; a RenderError is its
    documented, per-frontend report (`NftablesDataplane._desired`)."""
    specs = {}
    for fe in desired.l4:
        try:
            spec = normalise(fe)
        except FrontendError:
            continue
        specs[spec.key] = spec
    return specs


def render_contract(name: str, desired: DesiredState) -> None:
    check_haproxy(render(desired.l7, RUN_DIR))
    specs = nft_specs(desired)
    for programmed in ({}, nft_specs(translated(name))):
        plan = nft.plan(programmed, specs)
        check_nft_lines(nft_render.lines(nft.frontends(plan)))


def test_unmutated_worlds_render_cleanly() -> None:
    """Every seed world translates and renders, and the L7 and L4 renderers
    have something to render (so the mutations below reach them)."""
    l7 = l4 = 0
    for name in sorted(worlds()):
        _, desired, _ = translate_contract(world(name))
        render_contract(name, desired)
        rc = render(desired.l7, RUN_DIR)
        assert not rc.problems, (name, rc.problems)
        for fe in desired.l4:
            normalise(fe)
        l7 += len(desired.l7)
        l4 += len(desired.l4)
    if (CONFORMANCE / "tests").is_dir():
        assert l7 >= 50 and l4 >= 20, (l7, l4)


@fuzz_settings(1200)
@given(mutated_worlds())
def test_desired_state_of_mutated_documents_renders_safely(case: tuple[str, list[Any]]) -> None:
    started = time.perf_counter()
    name, docs = case
    with tolerating_known_bugs():
        _, desired, _ = translate_contract(docs)
        render_contract(name, desired)
    _count("render", started)


# Every hostile string in every field that reaches the HAProxy configuration:
# (world, kind, name, path to the value, other edits that make it reachable).
_RULE = ("spec", "rules", 0)
TARGETS: list[tuple[str, str, str, Path_, dict[Path_, Any]]] = [
    (
        "httproute-request-header-modifier",
        "HTTPRoute",
        "request-header-modifier",
        (*_RULE, "filters", 0, "requestHeaderModifier", "set", 0, "value"),
        {},
    ),
    (
        "httproute-request-header-modifier",
        "HTTPRoute",
        "request-header-modifier",
        (*_RULE, "filters", 0, "requestHeaderModifier", "set", 0, "name"),
        {},
    ),
    (
        "httproute-response-header-modifier",
        "HTTPRoute",
        "response-header-modifier",
        (*_RULE, "filters", 0, "responseHeaderModifier", "set", 0, "value"),
        {},
    ),
    (
        "httproute-header-matching",
        "HTTPRoute",
        "header-matching",
        (*_RULE, "matches", 0, "headers", 0, "value"),
        {},
    ),
    (
        "httproute-header-matching",
        "HTTPRoute",
        "header-matching",
        (*_RULE, "matches", 0, "headers", 0, "value"),
        {(*_RULE, "matches", 0, "headers", 0, "type"): "RegularExpression"},
    ),
    (
        "httproute-query-param-matching",
        "HTTPRoute",
        "query-param-matching",
        (*_RULE, "matches", 0, "queryParams", 0, "value"),
        {},
    ),
    (
        "httproute-exact-path-matching",
        "HTTPRoute",
        "exact-matching",
        (*_RULE, "matches", 0, "path", "value"),
        {},
    ),
    (
        "httproute-exact-path-matching",
        "HTTPRoute",
        "exact-matching",
        (*_RULE, "matches", 0, "path", "value"),
        {(*_RULE, "matches", 0, "path", "type"): "RegularExpression"},
    ),
    (
        "httproute-exact-path-matching",
        "HTTPRoute",
        "exact-matching",
        (*_RULE, "matches", 0, "path", "value"),
        {(*_RULE, "matches", 0, "path", "type"): "PathPrefix"},
    ),
    (
        "httproute-method-matching",
        "HTTPRoute",
        "method-matching",
        (*_RULE, "matches", 0, "method"),
        {},
    ),
    (
        "httproute-redirect-host-and-status",
        "HTTPRoute",
        "redirect-host-and-status",
        (*_RULE, "filters", 0, "requestRedirect", "hostname"),
        {},
    ),
    (
        "httproute-rewrite-path",
        "HTTPRoute",
        "rewrite-path",
        (*_RULE, "filters", 0, "urlRewrite", "path", "replacePrefixMatch"),
        {},
    ),
    (
        "httproute-timeout-request",
        "HTTPRoute",
        "request-timeout",
        (*_RULE, "timeouts", "request"),
        {},
    ),
    (
        "httproute-listener-hostname-matching",
        "Gateway",
        "httproute-listener-hostname-matching",
        ("spec", "listeners", 0, "hostname"),
        {},
    ),
    (
        "tlsroute-simple-same-namespace",
        "TLSRoute",
        "gateway-conformance-infra-test",
        ("spec", "hostnames", 0),
        {},
    ),
]


def _named(docs: list[Doc], kind: str, name: str) -> Doc:
    for doc in docs:
        if doc.get("kind") == kind and doc.get("metadata", {}).get("name") == name:
            return doc
    raise AssertionError(f"no {kind} {name}")


def _set(doc: Doc, path: Path_, value: Any) -> None:
    container, key = _parent(doc, path)
    assert isinstance(container, dict) or key < len(container), path
    container[key] = value


def _sweep_values() -> Iterator[Any]:
    for i, value in enumerate((*HOSTILE_STRINGS, *ODD_HOSTNAMES)):
        yield pytest.param(value, id=f"{i}-{value[:12].encode('ascii', 'replace').decode()}")


@pytest.mark.parametrize("value", list(_sweep_values()))
def test_hostile_string_in_every_rendered_field_is_refused_or_quoted(value: str) -> None:
    if not any(n.startswith("conformance/") for n in worlds()):
        pytest.skip(f"{CONFORMANCE} is not present")
    reached = []
    for test, kind, name, path, also in TARGETS:
        docs = world(f"conformance/{test}")
        doc = _named(docs, kind, name)
        assert isinstance(_get(doc, path), str), (test, path)
        _set(doc, path, value)
        for other, v in also.items():
            _set(doc, other, v)
        _, desired, _ = translate_contract(docs)
        rc = render(desired.l7, RUN_DIR)
        check_haproxy(rc)
        if MARK in rc.text:
            reached.append(path[-1])
    # The model refuses much; what it lets through the renderer must quote.
    # A value HAProxy can hold gets there (header values take any), or this
    # test would prove nothing.
    if MARK in value and _PRINTABLE.fullmatch(value):
        assert reached, "refused everywhere"


# The renderer does not rely on the model's validation: its own inputs, with
# leaves of the right type but any value, still render safely.


def _leaves(obj: Any, path: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            yield from _leaves(getattr(obj, f.name), (*path, f.name))
    elif isinstance(obj, tuple):
        for i, item in enumerate(obj):
            yield from _leaves(item, (*path, i))
    elif isinstance(obj, str | int) and not isinstance(obj, bool):
        yield path, obj


def _replace(obj: Any, path: Path_, value: Any) -> Any:
    if not path:
        return value
    step, rest = path[0], path[1:]
    if isinstance(obj, tuple):
        assert isinstance(step, int)
        return (*obj[:step], _replace(obj[step], rest, value), *obj[step + 1 :])
    assert isinstance(step, str)
    return dataclasses.replace(obj, **{step: _replace(getattr(obj, step), rest, value)})


# Fields that hold identities (object names the model validated as DNS names):
# the renderer writes them into comments and derived names.
_IDENTITY_FIELDS = {"gateway", "listener", "route", "secret"}


def _is_identity(path: Path_) -> bool:
    fields = [p for p in path if isinstance(p, str)]
    last = fields[-1] if fields else ""
    return last in _IDENTITY_FIELDS or (last == "name" and "services" in fields)


_ALL_STRINGS = HOSTILE_STRINGS + NOT_IPS + ODD_HOSTNAMES + ODD_STRINGS
# Strings that end in one line feed: Python's `$` matches before it.
LINE_ENDS = [v for v in _ALL_STRINGS if v.endswith("\n")] + [f"/{MARK}\n", f"x-{MARK}\n"]
# Pools of values, each a case of its own (the bugs of some are marked below):
# (whether identity fields take them, the values, the only field they go to).
POOLS: dict[str, tuple[bool, list[str], str | None]] = {
    "values": (False, [v for v in _ALL_STRINGS if v not in LINE_ENDS and v != "}"], None),
    "line-ends": (False, LINE_ENDS, None),
    "lone-brace": (False, ["}"], "path"),
    "scoped-ips": (False, SCOPED_IPS, None),
    "names": (True, HOSTILE_STRINGS + ODD_HOSTNAMES, None),
}


@st.composite
def hostile_listeners(draw: st.DrawFn, pool: str) -> list[L7Listener]:
    identities, strings, only = POOLS[pool]
    names = sorted(n for n in worlds() if translated(n).l7)
    listeners = tuple(translated(draw(st.sampled_from(names))).l7)
    for _ in range(draw(st.integers(min_value=1, max_value=5))):
        leaves = [
            (p, v)
            for p, v in _leaves(listeners)
            if _is_identity(p) == identities and (only is None or only in p)
        ]
        if not leaves:
            break
        path, value = draw(st.sampled_from(leaves))
        new: Any
        if isinstance(value, str):
            new = draw(st.sampled_from(strings))
        else:
            new = draw(st.sampled_from([-(2**63), -1, 0, 1, 2, 65535, 65536, 2**31, 2**63]))
        listeners = _replace(listeners, path, new)
    return list(listeners)


_POOL_BUGS: dict[str, str] = {}


@pytest.mark.parametrize(
    "pool",
    [
        pytest.param(
            pool,
            marks=[pytest.mark.xfail(strict=True, reason=_POOL_BUGS[pool])]
            if pool in _POOL_BUGS
            else [],
        )
        for pool in POOLS
    ],
)
@fuzz_settings(1000)
@given(data=st.data())
def test_render_quotes_hostile_values_it_did_not_validate_itself(
    pool: str, data: st.DataObject
) -> None:
    listeners = data.draw(hostile_listeners(pool), label="listeners")
    started = time.perf_counter()
    check_haproxy(render(listeners, RUN_DIR))
    _count(f"render-direct[{pool}]", started)


# -- integers past Python's int-to-str limit ------------------------------------------------

# YAML reads hex, octal and binary integers of any size (decimal ones past 4300
# digits are refused by int() itself): 0x and 3600 hex digits is 14 400 bits,
# 4335 decimal digits, which neither an f-string nor json.dumps can print.
HUGE_HEX = "0x" + "f" * 3600


def _int_leaves(docs: list[Doc]) -> list[tuple[int, Path_]]:
    return [
        (i, path)
        for i, doc in enumerate(docs)
        for path in _paths(doc, PATH_DEPTH)
        if type(_get(doc, path)) is int
    ]


def _integer_fields() -> Iterator[tuple[str, str, int, Path_]]:
    """(id, world, document index, path): every distinct integer field of the
    seeds once, and metadata.generation of objects that get a status."""
    seen: set[object] = set()
    for name in sorted(worlds()):
        docs = world(name)
        for i, path in _int_leaves(docs):
            key = (docs[i]["kind"], tuple("*" if isinstance(p, int) else p for p in path))
            if key not in seen:
                seen.add(key)
                yield f"{key[0]}.{'.'.join(map(str, key[1]))}", name, i, path
    for kind in ("GatewayClass", "Gateway", "HTTPRoute"):
        for name in sorted(worlds()):
            docs = world(name)
            found = [i for i, d in enumerate(docs) if d.get("kind") == kind]
            if found and name.startswith("conformance/httproute"):
                yield f"{kind}.metadata.generation", name, found[0], ("metadata", "generation")
                break


_INTEGER_BUGS: dict[str, str] = {}


def _integer_cases() -> Iterator[Any]:
    for ident, name, i, path in _integer_fields():
        reason = _INTEGER_BUGS.get(ident)
        marks = [pytest.mark.xfail(strict=True, reason=reason)] if reason else []
        yield pytest.param(name, i, path, id=ident, marks=marks)


@pytest.mark.parametrize(("name", "index", "path"), list(_integer_cases()))
def test_integer_field_past_the_str_limit_is_refused_or_written(
    name: str, index: int, path: Path_
) -> None:
    """The field as a YAML hex literal too big to print: refused with a
    message, or written; never a ValueError."""
    docs = world(name)
    _set(docs[index], path, "HUGE")
    text = json.dumps(docs).replace('"HUGE"', HUGE_HEX)  # JSON is YAML
    snapshot = read_contract("world.yaml", text)
    assert snapshot is not None
    document = translation_document(snapshot, translate(snapshot, CONTROLLER))
    dump(document, "json")


# -- regressions: the minimal input of every bug found ----------------------------------------
#
# Fixed ones stay as plain tests; open ones are strict xfails (a fix turns
# them into failures: then drop the mark, and the bug's entry in KNOWN_BUGS).

# The reader (fixed in e33400b: agent/sources/manifests.py catches every
# parser error at the file boundary): each is refused with a ManifestError.
READER_REGRESSIONS = [
    ("json-deep-nesting", "x.json", "[" * 100_000),  # was RecursionError
    ("json-int-past-str-limit", "x.json", "[" + "1" * 4301 + "]"),  # was ValueError
    ("yaml-int-past-str-limit", "x.yaml", "a: " + "1" * 4301 + "\n"),  # was ValueError
    ("yaml-lone-surrogate", "x.yaml", "a: \ud800\n"),  # was UnicodeEncodeError
]


@pytest.mark.parametrize(
    ("path", "text"), [pytest.param(p, t, id=n) for n, p, t in READER_REGRESSIONS]
)
def test_reader_regressions_are_manifest_errors(path: str, text: str) -> None:
    assert read_contract(path, text) is None


def test_huge_hex_listener_port_is_a_field_error() -> None:
    # Was: Fields.integer formatted the int into its message, ValueError (fixed in e33400b).
    text = (
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: Gateway\n"
        "metadata: {name: gw}\n"
        "spec:\n"
        "  gatewayClassName: c\n"
        f"  listeners: [{{name: a, protocol: TCP, port: {HUGE_HEX}}}]\n"
    )
    snapshot = read_contract("x.yaml", text)
    assert snapshot is not None and len(snapshot.invalid) == 1


_REDIRECT_STATUS = "HTTPRoute.spec.rules.*.filters.*.requestRedirect.statusCode"


def test_huge_hex_redirect_status_is_a_field_error() -> None:
    text = (
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: HTTPRoute\n"
        "metadata: {name: r}\n"
        "spec:\n"
        "  rules:\n"
        "  - filters:\n"
        "    - type: RequestRedirect\n"
        f"      requestRedirect: {{statusCode: {HUGE_HEX}}}\n"
    )
    snapshot = read_contract("x.yaml", text)
    assert snapshot is not None and len(snapshot.invalid) == 1


def test_huge_hex_generation_is_refused_or_written() -> None:
    # Was: generation had no maximum and json.dumps of the status raised
    # ValueError (fixed in 5e56a0b: an int64).
    text = (
        "apiVersion: gateway.networking.k8s.io/v1\n"
        "kind: GatewayClass\n"
        f"metadata: {{name: gatewaylb, generation: {HUGE_HEX}}}\n"
        "spec: {controllerName: gatewaylb.io/agent}\n"
    )
    snapshot = read_contract("x.yaml", text)
    assert snapshot is not None
    document = translation_document(snapshot, translate(snapshot, CONTROLLER))
    dump(document, "json")


def _our_gateway(address: str, listener: Doc | None = None) -> list[Doc]:
    return [
        gateway_class(CLASS),
        {
            "apiVersion": "gateway.networking.k8s.io/v1",
            "kind": "Gateway",
            "metadata": {"name": "gw", "namespace": "default"},
            "spec": {
                "gatewayClassName": CLASS,
                "addresses": [{"type": "IPAddress", "value": address}],
                "listeners": [listener or {"name": "tcp", "protocol": "TCP", "port": 80}],
            },
        },
    ]


@pytest.mark.parametrize("address", ["\x00", "\ud800"], ids=["nul", "surrogate"])
def test_bad_character_in_an_endpoint_address_is_a_field_error(address: str) -> None:
    # Was: inet_pton raised ValueError (NUL) or UnicodeEncodeError (a lone
    # surrogate) past _check_address's `except OSError` (fixed in 5e56a0b).
    text = json.dumps(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {"name": "s"},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [address]}],
            "ports": [],
        }
    )  # the file holds "\u0000" or "\ud800"
    snapshot = read_contract("x.json", text)
    assert snapshot is not None and not snapshot.endpoint_slices


def test_lone_surrogate_in_a_regex_path_is_refused() -> None:
    # Was: it reached the desired state, and `translate -o json` and the status
    # file could not encode it (fixed in 5e56a0b: strings must be valid Unicode).
    route = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": "r", "namespace": "default"},
        "spec": {
            "parentRefs": [{"name": "gw"}],
            "rules": [{"matches": [{"path": {"type": "RegularExpression", "value": "\ud800"}}]}],
        },
    }
    docs = [*_our_gateway("192.0.2.1", {"name": "http", "protocol": "HTTP", "port": 80}), route]
    snapshot = read_contract("x.json", json.dumps(docs))  # the JSON escape "\ud800"
    assert snapshot is not None
    document = translation_document(snapshot, translate(snapshot, CONTROLLER))
    dump(document, "json").encode("utf-8")


def test_ipv6_zone_in_a_gateway_address_is_refused() -> None:
    # Was: fe80::1%eth0 became a VIP; the normalisation took it and rendering
    # the plan raised OSError in inet_pton (fixed in 5e56a0b: zones are refused).
    desired = translate(build_snapshot(_sources(_our_gateway("fe80::1%eth0"))), CONTROLLER).desired
    assert not any("%" in vip for vip in desired.vips)
    check_nft_lines(nft_render.lines(nft.frontends(nft.plan({}, nft_specs(desired)))))


@pytest.mark.parametrize(
    ("vip", "backend"), [("fe80::1%eth0", "fd00::1"), ("fd00::9", "fe80::1%1")]
)
def test_nft_normalise_refuses_an_ipv6_zone(vip: str, backend: str) -> None:
    frontend = L4Frontend(
        vip, "tcp", 80, (Backend(backend, 80, 1),), 0, FrontendSource("d", "g", "l")
    )
    try:
        spec = normalise(frontend)
    except FrontendError:
        return
    check_nft_lines(nft_render.lines(nft.frontends(nft.plan({}, {spec.key: spec}))))


def _listener_with_header_value(
    value: str, listener: str = "http", match: HTTPMatch | None = None, vip: str = "192.0.2.1"
) -> L7Listener:
    modifier = HeaderModifier(set=(("x-a", value),), add=(), remove=())
    entry = HTTPRouteEntry(
        route=ObjectRef("HTTPRoute", "default", "r"),
        rule=0,
        match=match or HTTPMatch("PathPrefix", "/"),
        filters=(RouteFilter("RequestHeaderModifier", request_header_modifier=modifier),),
        backends=BackendSet(()),
    )
    return L7Listener(
        gateway="default/gw",
        listener=listener,
        vips=(vip,),
        port=80,
        protocol="HTTP",
        tls_mode=None,
        hostname=None,
        virtual_hosts=(VirtualHost("*", (entry,)),),
    )


def test_a_value_ending_in_a_line_feed_is_unrepresentable() -> None:
    # Was: escape's ^...$ patterns let one trailing line feed through, and
    # word("v\n") broke its line (fixed in 5e56a0b).
    with pytest.raises(escape.Unrepresentable):
        escape.word("v\n")
    rc = render([_listener_with_header_value("v\n")], RUN_DIR)
    check_haproxy(rc)
    assert rc.problems


def test_a_listener_name_cannot_add_a_configuration_line() -> None:
    rc = render([_listener_with_header_value("v", listener="http\nhttp-request deny")], RUN_DIR)
    check_haproxy(rc)


def test_an_exact_path_cannot_close_its_condition() -> None:
    listener = _listener_with_header_value("v", match=HTTPMatch("Exact", "}"))
    check_haproxy(render([listener], RUN_DIR))


def test_an_ipv6_zone_is_not_written_raw_into_the_proxy_configuration() -> None:
    check_haproxy(render([_listener_with_header_value("v", vip="fe80::1%eth0")], RUN_DIR))
