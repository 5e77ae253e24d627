"""The manifest reader against hostile input (agent/sources/files.py).

Whoever can write below the manifest directory must not be able to crash the
agent, make it read forever or block, exhaust its memory, make a restart drop
good routes, hide a problem from the user, or forge a log line with a file
name.  Every case runs through `load_directory` (what `translate` does), a
watched `ManifestDirectory` and a `FileSource` (what `run` does); each names
the file in the exact message and keeps the last good content in force.

A case that would hang or read forever before the fix runs in a forked child
with a deadline and a memory cap, so a regression fails instead of stalling
or exhausting the machine.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import select
import signal
import stat
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from agent.cli import main
from agent.model.snapshot import Snapshot
from agent.sources.files import (
    DEFAULT_LIMITS,
    ContentCache,
    FileSource,
    Limits,
    ManifestDirectory,
    ManifestError,
    list_manifests,
    load_directory,
    parse_text,
    read_manifest,
)

GATEWAY = """\
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: {name}
  namespace: default
spec:
  gatewayClassName: gatewaylb
  listeners:
  - name: tcp
    port: 5000
    protocol: TCP
"""
HALF_SAVED = GATEWAY.format(name="web").split("  - name")[0] + "  - {name: tc"
JSON_BOMB = "[" * 1000 + "]" * 1000


def _good(directory: Path, name: str = "web", file: str = "gw.yaml") -> Path:
    path = directory / file
    path.write_text(GATEWAY.format(name=name))
    return path


def _gateways(snapshot: Snapshot) -> list[str]:
    return [g.meta.name for g in snapshot.gateways]


def _errors(directory: ManifestDirectory) -> list[str]:
    return [str(e) for e in directory.errors]


def _strict(directory: Path) -> str:
    with pytest.raises(ManifestError) as caught:
        load_directory(directory)
    return str(caught.value)


def _replace(path: Path, make: Callable[[Path], None]) -> None:
    path.unlink()
    make(path)


def _in_child(fn: Callable[[], Any], seconds: float = 10.0, memory: int = 1 << 30) -> Any:
    """fn() in a forked child, with `seconds` of wall time and `memory` more
    bytes of address space; its JSON-able result, or pytest.fail."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_end)
        try:
            pages = int(Path("/proc/self/statm").read_text().split()[0])
            cap = pages * os.sysconf("SC_PAGE_SIZE") + memory
            resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
            out = json.dumps({"result": fn()})
        except BaseException as exc:
            out = json.dumps({"raised": f"{type(exc).__name__}: {exc}"[:2000]})
        os.write(write_end, out.encode())
        os._exit(0)
    os.close(write_end)
    deadline = time.monotonic() + seconds
    data = b""
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([read_end], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                pytest.fail(f"still running after {seconds} s")
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(read_end)
        os.waitpid(pid, 0)
    if not data:
        pytest.fail("the child died without an answer (out of memory?)")
    answer = json.loads(data)
    if "raised" in answer:
        pytest.fail(f"raised {answer['raised']}")
    return answer["result"]


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    started = time.monotonic()
    result = fn()
    return result, time.monotonic() - started


# -- 1. nothing in a file can raise anything but ManifestError --------------------------------


def test_json_bomb_is_a_manifest_error_in_every_reader(tmp_path: Path) -> None:
    bomb = tmp_path / "x.json"
    bomb.write_text(JSON_BOMB)
    assert len(JSON_BOMB) == 2000
    assert _strict(tmp_path) == f"{bomb}:1: document is nested too deeply"

    bomb.unlink()
    good = tmp_path / "x.json"
    good.write_text(json.dumps(yaml.safe_load(GATEWAY.format(name="web"))))
    directory = ManifestDirectory(tmp_path)
    assert _gateways(directory.scan()) == ["web"]
    good.write_text(JSON_BOMB)
    snapshot = directory.scan()
    assert _errors(directory) == [f"{bomb}:1: document is nested too deeply"]
    assert _gateways(snapshot) == ["web"]  # the last good parse stays in force

    source = FileSource(tmp_path)
    try:
        assert _gateways(source.snapshot()) == []  # never good in this process
        assert source.errors() == [f"{bomb}:1: document is nested too deeply"]
    finally:
        source.close()


def test_translate_exits_2_with_file_line_message_on_the_json_bomb(tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(JSON_BOMB)
    result = CliRunner().invoke(main, ["translate", "--manifests", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert result.stderr == f"{tmp_path / 'x.json'}:1: document is nested too deeply\n"
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        (
            "ts.yaml",
            "a: !!timestamp 2001-13-45\n",
            "cannot be parsed: ValueError: month must be in 1..12",
        ),
        (
            "float.yaml",
            "a: !!float abc\n",
            "cannot be parsed: ValueError: could not convert string to float: 'abc'",
        ),
        (
            "int.yaml",
            "a: !!int " + "1" * 5000 + "\n",
            "cannot be parsed: ValueError: Exceeds "
            "the limit (4300 digits) for integer string conversion",
        ),
        (
            "int.json",
            '{"a": ' + "1" * 5000 + "}",
            "cannot be parsed: ValueError: Exceeds the "
            "limit (4300 digits) for integer string conversion",
        ),
        ("alias.yaml", "&a [*a]\n", "1: document is nested too deeply"),
        ("deep.yaml", "[" * 1000 + "]" * 1000, "1: document is nested too deeply"),
        ("deeper.yaml", "[" * 100_000, "1: exceeded maximum nesting depth"),
        (
            "latin1.yaml",
            "a: caf\xe9\n".encode("latin-1"),
            "1: not UTF-8: invalid continuation byte",
        ),
        ("utf16.json", '{"a": 1}'.encode("utf-16"), "1: not UTF-8: invalid start byte"),
        (
            "nul.yaml",
            "a: \x00\n",
            "unacceptable character #x0000: control characters are not allowed",
        ),
    ],
)
def test_odd_content_is_a_manifest_error_naming_the_file(
    tmp_path: Path, name: str, content: str | bytes, message: str
) -> None:
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    sep = "" if message[0].isdigit() else " "
    assert str(caught.value).startswith(f"{path}:{sep}{message}"), str(caught.value)
    assert "\n" not in str(caught.value)
    assert _strict(tmp_path) == str(caught.value)


# -- 2. only regular files, bounded while reading ---------------------------------------------


def _device_and_fifo_case(tmp_path: Path, make: Callable[[Path], None], kind: str) -> None:
    def strict() -> list[Any]:
        path = tmp_path / "x.yaml"
        make(path)
        try:
            (_, elapsed) = _timed(lambda: load_directory(tmp_path))
        except ManifestError as exc:
            return [str(exc), 0.0]
        finally:
            path.unlink()
        return ["no error", elapsed]

    message, _ = _in_child(strict)
    assert message == f"{tmp_path / 'x.yaml'}: not a regular file ({kind})"

    def watched() -> list[Any]:
        path = _good(tmp_path, file="x.yaml")
        directory = ManifestDirectory(tmp_path)
        directory.scan()
        _replace(path, make)
        snapshot, elapsed = _timed(directory.scan)
        again, _ = _timed(directory.scan)
        source = FileSource(tmp_path)
        try:
            fresh, elapsed_source = _timed(source.snapshot)
            source_errors = source.errors()
        finally:
            source.close()
            path.unlink()
        return [
            _gateways(snapshot),
            _errors(directory),
            again is snapshot,
            elapsed,
            _gateways(fresh),
            source_errors,
            elapsed_source,
        ]

    names, errors, same, elapsed, fresh, source_errors, elapsed_source = _in_child(watched)
    expected = [f"{tmp_path / 'x.yaml'}: not a regular file ({kind})"]
    assert (names, errors, same) == (["web"], expected, True)
    assert (fresh, source_errors) == ([], expected)
    assert elapsed < 1.0 and elapsed_source < 1.0


def test_symlink_to_dev_zero_is_refused_at_once_not_read_forever(tmp_path: Path) -> None:
    _device_and_fifo_case(tmp_path, lambda p: p.symlink_to("/dev/zero"), "character device")


def test_fifo_is_refused_at_once_never_opened(tmp_path: Path) -> None:
    _device_and_fifo_case(tmp_path, lambda p: os.mkfifo(p), "FIFO")


def test_a_file_just_over_the_byte_limit_is_refused_reading_at_most_the_limit(
    tmp_path: Path,
) -> None:
    limit = DEFAULT_LIMITS.file_bytes
    assert limit == 32 * 1024 * 1024
    path = tmp_path / "big.yaml"
    with path.open("wb") as f:  # comments: a reader that does not stop parses it happily
        f.write((b"#" * 1023 + b"\n") * (limit // 1024) + b"\n")
    assert path.stat().st_size == limit + 1
    tracemalloc.start()
    try:
        with pytest.raises(ManifestError) as caught:
            read_manifest(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value) == f"{path}: file is larger than {limit} bytes"
    assert peak < 2 * limit


def test_the_byte_limit_holds_while_reading_a_growing_or_lying_file(tmp_path: Path) -> None:
    # /proc files say st_size 0; the limit is what was read, not what stat said.
    small = Limits(file_bytes=100)
    path = tmp_path / "m.yaml"
    path.write_text("# x\n" * 26)
    with pytest.raises(ManifestError, match="file is larger than 100 bytes"):
        read_manifest(path, small)
    path.write_text("# x\n" * 25)
    assert read_manifest(path, small).docs == []


def test_dense_yaml_under_the_byte_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    # 9 MiB of `[1,1,...` is 4.7M values: 1.7 GB and 20 s to parse before the fix.
    path = tmp_path / "dense.yaml"
    path.write_text("[" + "1," * (9 * 1024 * 1024 // 2) + "1]")

    def read() -> list[Any]:
        try:
            _, elapsed = _timed(lambda: read_manifest(path))
        except ManifestError as exc:
            return [str(exc), 0.0]
        return ["no error", elapsed]

    message, _ = _in_child(read, seconds=20)
    assert message == f"{path}: more than 4000000 tokens (4718594): too dense for a manifest"


def test_one_huge_yaml_document_is_refused_before_its_nodes_are_built(tmp_path: Path) -> None:
    path = tmp_path / "one.yaml"
    path.write_text(GATEWAY.format(name="first") + "---\n{" + "a," * 300_000 + "a}\n")
    tracemalloc.start()
    try:
        with pytest.raises(ManifestError) as caught:
            read_manifest(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(caught.value) == (
        f"{path}:12: more than 256000 tokens in one YAML document (300007): split it into "
        "documents (---)"
    )
    assert peak < 20 * path.stat().st_size  # the text, not its nodes (400 bytes a token)


def test_document_limits_per_file(tmp_path: Path) -> None:
    path = tmp_path / "junk.json"
    path.write_text("[" + ",\n".join(["1"] * 100_001) + "]")
    assert _strict(tmp_path) == f"{path}: more than 100000 documents"
    # Exactly the limit: every junk document reported, each at its own line.
    path.write_text("[" + ",\n".join(["1"] * 100_000) + "]")
    problems = load_directory(tmp_path).problems
    assert len(problems) == 100_000
    assert [p.source for p in problems[:3]] == [f"{path}:1", f"{path}:2", f"{path}:3"]
    assert problems[-1].source == f"{path}:100000"
    assert str(problems[1]) == f"{path}:2: a document must be an object with apiVersion and kind"


def test_directory_totals_refuse_the_file_that_overflows_and_keep_the_rest(
    tmp_path: Path,
) -> None:
    limits = Limits(total_documents=3)
    a = tmp_path / "a.yaml"
    a.write_text(GATEWAY.format(name="a1") + "---\n" + GATEWAY.format(name="a2"))
    b = _good(tmp_path, "b1", "b.yaml")
    directory = ManifestDirectory(tmp_path, limits=limits)
    assert _gateways(directory.scan()) == ["a1", "a2", "b1"]
    b.write_text(GATEWAY.format(name="b1") + "---\n" + GATEWAY.format(name="b2"))
    snapshot = directory.scan()
    over = f"{b}: not used: the manifests would hold more than 3 documents"
    assert _errors(directory) == [over]
    assert _gateways(snapshot) == ["a1", "a2", "b1"]  # b's last good parse
    assert directory.scan() is snapshot and _errors(directory) == [over]
    a.unlink()  # room again: b's new content is read again and fits
    assert _gateways(directory.scan()) == ["b1", "b2"]
    assert _errors(directory) == []

    (tmp_path / "c.yaml").write_text(GATEWAY.format(name="c1") * 1)
    (tmp_path / "d.yaml").write_text(GATEWAY.format(name="d1"))
    assert _strict_with(tmp_path, limits) == (
        f"{tmp_path / 'd.yaml'}: not used: the manifests would hold more than 3 documents"
    )


def _strict_with(directory: Path, limits: Limits) -> str:
    with pytest.raises(ManifestError) as caught:
        load_directory(directory, limits)
    return str(caught.value)


def test_limits_chosen_hold_the_configuration_they_were_measured_on() -> None:
    # bench/translate.py's 10k TCPRoutes: 8.6 MiB / 1.42M tokens / 30k documents
    # as YAML, 17 MiB / 1.19M tokens as JSON; 50k routes: 150k documents.
    limits = DEFAULT_LIMITS
    assert limits.file_bytes >= 1.8 * 17 * 1024 * 1024
    assert limits.file_tokens >= 2.5 * 1_420_000
    assert limits.file_documents >= 3 * 30_159
    assert limits.total_documents >= 3 * 150_784
    assert limits.total_tokens >= 2 * 7_120_000


# -- 3. a restart with a half-saved file keeps the last good content --------------------------


def _cache_entries(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir())


def test_restart_with_a_half_saved_file_keeps_its_last_good_content(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifests, cache = tmp_path / "manifests", tmp_path / "run" / "manifest-cache"
    manifests.mkdir()
    path = _good(manifests)
    assert _gateways(ManifestDirectory(manifests, cache_dir=cache).scan()) == ["web"]
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    [entry] = _cache_entries(cache)
    assert entry.read_bytes() == path.read_bytes()
    assert stat.S_IMODE(entry.stat().st_mode) == 0o600
    assert entry.stat().st_uid == os.geteuid()

    path.write_text(HALF_SAVED)  # the agent is down meanwhile
    half = f"{path}:10: did not find expected ',' or '}}'"
    assert _gateways(ManifestDirectory(manifests).scan()) == []  # without a cache: gone

    caplog.set_level(logging.WARNING, logger="agent.sources.files")
    restarted = ManifestDirectory(manifests, cache_dir=cache)
    assert _gateways(restarted.scan()) == ["web"]
    assert _errors(restarted) == [half]
    assert f"event=manifest_from_cache file={path} bytes=" in caplog.text
    assert entry.read_bytes() == GATEWAY.format(name="web").encode()  # not the broken one

    source = FileSource(manifests, cache_dir=cache)
    try:
        assert _gateways(source.snapshot()) == ["web"]
        assert source.errors() == [half]
    finally:
        source.close()

    _good(manifests, "fixed")  # saved for good: in force, and cached
    assert _gateways(restarted.scan()) == ["fixed"]
    assert entry.read_bytes() == GATEWAY.format(name="fixed").encode()
    path.unlink()  # deleting a file is a real removal, from the cache too
    assert _gateways(restarted.scan()) == []
    assert _cache_entries(cache) == []
    path.write_text(HALF_SAVED)
    assert _gateways(ManifestDirectory(manifests, cache_dir=cache).scan()) == []


def test_a_file_deleted_while_the_agent_was_down_leaves_the_cache(tmp_path: Path) -> None:
    manifests, cache = tmp_path / "manifests", tmp_path / "cache"
    manifests.mkdir()
    path = _good(manifests)
    _good(manifests, "other", "other.yaml")
    ManifestDirectory(manifests, cache_dir=cache).scan()
    assert len(_cache_entries(cache)) == 2
    leftover = cache / f".{'0' * 64}.abc.tmp"  # a crash between write and rename
    leftover.write_bytes(b"x")
    path.unlink()
    restarted = ManifestDirectory(manifests, cache_dir=cache)
    assert _gateways(restarted.scan()) == ["other"]
    assert _cache_entries(cache) == [ContentCache(cache).entry(manifests / "other.yaml")]
    path.write_text(HALF_SAVED)  # a new file of the same name does not resurrect it
    assert _gateways(restarted.scan()) == ["other"]


def test_a_file_over_a_limit_keeps_its_last_good_content_also_after_a_restart(
    tmp_path: Path,
) -> None:
    manifests, cache = tmp_path / "manifests", tmp_path / "cache"
    manifests.mkdir()
    path = _good(manifests)
    limits = Limits(file_bytes=1000)
    directory = ManifestDirectory(manifests, cache_dir=cache, limits=limits)
    directory.scan()
    path.write_text(GATEWAY.format(name="web") + "#" * 1000 + "\n")
    assert _gateways(directory.scan()) == ["web"]
    assert _errors(directory) == [f"{path}: file is larger than 1000 bytes"]
    restarted = ManifestDirectory(manifests, cache_dir=cache, limits=limits)
    assert _gateways(restarted.scan()) == ["web"]


@pytest.mark.parametrize("problem", ["other owner", "writable by others", "a symbolic link"])
def test_a_cache_directory_others_own_or_can_write_is_refused(tmp_path: Path, problem: str) -> None:
    manifests, cache = tmp_path / "manifests", tmp_path / "cache"
    manifests.mkdir()
    path = _good(manifests)
    ManifestDirectory(manifests, cache_dir=cache).scan()  # a good cache...
    if problem == "other owner":
        if os.geteuid() != 0:
            pytest.skip("chown needs root")
        os.chown(cache, 12345, 12345)
        message = f"{cache}: cache directory refused: owned by uid 12345, not 0"
    elif problem == "writable by others":
        cache.chmod(0o777)
        message = f"{cache}: cache directory refused: writable by others (mode 0777)"
    else:
        real = tmp_path / "real-cache"
        cache.rename(real)
        cache.symlink_to(real)
        message = f"{cache}: cache directory refused: a symbolic link"
    path.write_text(HALF_SAVED)
    restarted = ManifestDirectory(manifests, cache_dir=cache)
    assert _gateways(restarted.scan()) == []  # ...that can no longer be trusted
    assert _errors(restarted) == [message, f"{path}:10: did not find expected ',' or '}}'"]
    with pytest.raises(ManifestError, match="cache directory refused"):
        ContentCache(cache)


# -- 4. problems that never reached the user --------------------------------------------------


def test_dangling_symlinks_and_loops_are_reported_naming_the_path(tmp_path: Path) -> None:
    dangling, loop = tmp_path / "a.yaml", tmp_path / "b.yaml"
    dangling.symlink_to("/nonexistent/gw.yaml")
    assert _strict(tmp_path) == f"{dangling}: dangling symbolic link (to /nonexistent/gw.yaml)"
    dangling.unlink()
    loop.symlink_to(loop.name)
    assert _strict(tmp_path) == (f"{loop}: symbolic link loop (too many levels of symbolic links)")

    good = _good(tmp_path, file="a.yaml")
    directory = ManifestDirectory(tmp_path)
    directory.scan()
    _replace(good, lambda p: p.symlink_to("gone.yaml"))
    snapshot = directory.scan()
    expected = [
        f"{dangling}: dangling symbolic link (to gone.yaml)",
        f"{loop}: symbolic link loop (too many levels of symbolic links)",
    ]
    assert _errors(directory) == expected
    assert _gateways(snapshot) == ["web"]
    source = FileSource(tmp_path)
    try:
        source.snapshot()
        assert source.errors() == expected
    finally:
        source.close()


def test_a_symlink_to_a_file_is_read_and_directory_link_cycles_do_not_loop(
    tmp_path: Path,
) -> None:
    (tmp_path / "real").mkdir()
    real = _good(tmp_path / "real")
    (tmp_path / "link.yaml").symlink_to(real)
    sub = tmp_path / "sub"
    sub.mkdir()
    (sub / "up").symlink_to("..")  # a cycle: sub/up/sub/up/...
    (sub / "self").symlink_to(".")
    (tmp_path / "elsewhere").symlink_to("/etc")  # not followed either
    listing, elapsed = _timed(lambda: list_manifests(tmp_path, 100))
    assert (listing.paths, listing.errors, listing.complete) == (
        [tmp_path / "link.yaml", real],
        [],
        True,
    )
    assert elapsed < 1.0
    problems = [str(p) for p in load_directory(tmp_path).problems]
    assert problems == [
        f"{real}:1: duplicate Gateway default/web (first defined at {tmp_path / 'link.yaml'}:1)"
    ]
    source = FileSource(tmp_path)  # the watcher walks the same tree
    try:
        assert _gateways(source.snapshot()) == ["web"]
    finally:
        source.close()


def test_json_and_list_items_are_reported_at_their_own_lines(tmp_path: Path) -> None:
    array = '[\n  {"kind": 1},\n\n  2,\n  [3]\n]\n'
    assert [s for _, s in parse_text(array, "a.json")] == ["a.json:2", "a.json:4", "a.json:5"]
    listing = '{"apiVersion": "v1", "kind": "List",\n "items": [\n  1,\n  2]}'
    assert [s for _, s in parse_text(listing, "l.json")] == ["l.json:3", "l.json:4"]
    # A later "items" wins, as in json.loads; its items are not misplaced.
    twice = '{"kind": "List", "items": [\n1,\n2], "items":\n[3]}'
    assert parse_text(twice, "t.json") == [(3, "t.json:4")]
    shadowed = '{"kind": "List", "items": [\n1,\n2], "items": "x"}'
    assert parse_text(shadowed, "s.json") == [(json.loads(shadowed), "s.json:1")]
    yaml_list = "kind: List\nitems:\n- 1\n-\n  a: 2\n---\n- x\n- y\n"
    assert [s for _, s in parse_text(yaml_list, "l.yaml")] == [
        "l.yaml:3",
        "l.yaml:5",
        "l.yaml:7",
        "l.yaml:8",
    ]
    # Broken JSON is still reported by json.loads, at its line.
    with pytest.raises(ManifestError, match=r"^b\.json:3: Expecting value$"):
        parse_text("[\n1,\n,]", "b.json")
    # Whatever the parse path, the documents are json.loads's.
    text = json.dumps([{"a": [1, {"b": None}], "kind": "X"}, "s", 1.5, True], indent=1)
    assert [d for d, _ in parse_text(text, "x.json")] == json.loads(text)


def test_an_unchanged_broken_file_is_not_read_again_but_still_reported(tmp_path: Path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text(HALF_SAVED)
    directory = ManifestDirectory(tmp_path)
    snapshot = directory.scan()
    error = [f"{path}:10: did not find expected ',' or '}}'"]
    assert _errors(directory) == error
    assert directory.scan() is snapshot  # the daemon skips the sync by identity
    assert _errors(directory) == error
    path.write_text(GATEWAY.format(name="web"))
    assert _gateways(directory.scan()) == ["web"] and _errors(directory) == []


# -- 5. file names cannot split a message -----------------------------------------------------


def test_a_file_name_with_a_newline_cannot_forge_a_line(tmp_path: Path) -> None:
    name = "x\nts=2026-12-07T00:00:00.000Z level=info event=forged.yaml"
    path = tmp_path / name
    path.write_text(HALF_SAVED)
    message = _strict(tmp_path)
    assert "\n" not in message
    assert message == f"{str(path)!r}:10: did not find expected ',' or '}}'"
    path.write_text("- 1\n")
    problems = load_directory(tmp_path).problems
    assert [p.source for p in problems] == [f"{str(path)!r}:1"]
    escape = tmp_path / "\x1b[2Jx.json"
    escape.write_text(JSON_BOMB)
    assert f"{str(escape)!r}:1: document is nested too deeply" == _strict(tmp_path)
    assert ManifestError("a.yaml", 3, "bad\nline").args[0] == "a.yaml:3: bad\\nline"
