"""Maglev table generation: balance, weights, minimal disruption, determinism."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from agent.dataplane import maglev

REPO = Path(__file__).resolve().parents[2]


def backends(n: int, port: int = 8080) -> list[tuple[str, int]]:
    return [(f"10.{i // 250}.{i % 250}.1:{port}", 1) for i in range(n)]


@pytest.mark.parametrize("n", [2, 3, 7, 10, 100])
def test_equal_weights_are_even_within_one_percent(n: int) -> None:
    size = maglev.DEFAULT_SIZE
    table = maglev.build(backends(n), size)
    assert len(table) == size
    counts = Counter(table)
    assert set(counts) == set(range(n))
    ideal = size / n
    for count in counts.values():
        assert abs(count - ideal) / size < 0.01


@pytest.mark.parametrize("weights", [(3, 1), (1, 2, 7), (10, 1, 1), (100, 1)])
def test_weights_are_honoured_within_one_percent(weights: tuple[int, ...]) -> None:
    size = maglev.DEFAULT_SIZE
    entries = [(f"10.0.0.{i + 1}:80", w) for i, w in enumerate(weights)]
    counts = Counter(maglev.build(entries, size))
    total = sum(weights)
    for i, w in enumerate(weights):
        assert abs(counts[i] / size - w / total) < 0.01, (i, counts)


def test_zero_weight_gets_no_slot_and_none_left_means_empty() -> None:
    entries = [("a:1", 1), ("b:1", 0), ("c:1", 2)]
    counts = Counter(maglev.build(entries, 251))
    assert 1 not in counts
    assert counts[0] + counts[2] == 251
    assert maglev.build([("a:1", 0)], 251) == []
    assert maglev.build([], 251) == []


# Maglev's disruption grows with N/M (paper, figure 12): at M/N ~ 330 removing one
# of 50 backends moves ~1.5/N of the slots, at M/N >= 800 it stays under 1.2/N.
@pytest.mark.parametrize(("n", "size"), [(5, 16381), (10, 16381), (20, 16381), (50, 65521)])
def test_removing_one_backend_remaps_about_one_nth(n: int, size: int) -> None:
    before_entries = backends(n)
    removed = before_entries[n // 2][0]
    after_entries = [e for e in before_entries if e[0] != removed]
    before = [before_entries[i][0] for i in maglev.build(before_entries, size)]
    after = [after_entries[i][0] for i in maglev.build(after_entries, size)]
    moved = sum(1 for a, b in zip(before, after, strict=True) if a != b)
    # The removed backend's 1/N must move; Maglev moves a little more, not much.
    assert moved >= size / n * 0.98
    assert moved / size < 1.5 / n, moved / size


def test_adding_one_backend_remaps_about_one_over_n_plus_one() -> None:
    size = maglev.DEFAULT_SIZE
    n = 10
    before_entries = backends(n)
    after_entries = [*before_entries, ("10.9.9.9:8080", 1)]
    before = [before_entries[i][0] for i in maglev.build(before_entries, size)]
    after = [after_entries[i][0] for i in maglev.build(after_entries, size)]
    moved = sum(1 for a, b in zip(before, after, strict=True) if a != b)
    assert moved / size < 1.5 / (n + 1)


def test_order_of_entries_does_not_matter() -> None:
    entries = backends(20)
    shuffled = list(reversed(entries))
    a = [entries[i][0] for i in maglev.build(entries, 1021)]
    b = [shuffled[i][0] for i in maglev.build(shuffled, 1021)]
    assert a == b


def _digest(table: list[int]) -> str:
    return hashlib.sha256(",".join(map(str, table)).encode()).hexdigest()


def test_deterministic_across_processes() -> None:
    code = (
        "import hashlib\n"
        "from agent.dataplane import maglev\n"
        "e=[(f'10.0.0.{i}:80', 1 + i % 3) for i in range(1, 40)]\n"
        "t=maglev.build(e, 16381)\n"
        "print(hashlib.sha256(','.join(map(str, t)).encode()).hexdigest())\n"
    )
    outputs = set()
    for seed in ("0", "1", "12345", "random"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True
        )
        outputs.add(out.stdout.decode().strip())
    entries = [(f"10.0.0.{i}:80", 1 + i % 3) for i in range(1, 40)]
    outputs.add(_digest(maglev.build(entries, 16381)))
    assert len(outputs) == 1


def test_size_must_be_prime_and_ladder_is_prime() -> None:
    with pytest.raises(ValueError):
        maglev.build(backends(2), 1000)
    assert all(maglev.is_prime(s) for s in maglev.SIZES)
    assert maglev.table_size_for(1) == 251
    assert maglev.table_size_for(3) == 1021
    assert maglev.table_size_for(100) == 16381
    assert maglev.table_size_for(1000) == 16381  # capped by the maximum
    assert maglev.table_size_for(1000, maximum=65521) == 65521
    assert maglev.table_size_for(5, maximum=251) == 251


def test_build_is_fast_enough() -> None:
    entries = backends(100)
    best = min(_timed(entries) for _ in range(3))
    assert best < 0.05, f"16381-slot table for 100 backends took {best * 1000:.1f} ms"


def _timed(entries: list[tuple[str, int]]) -> float:
    start = time.perf_counter()
    maglev.build(entries, maglev.DEFAULT_SIZE)
    return time.perf_counter() - start


CASES = [
    (backends(1), 251),
    (backends(4), 1021),
    (backends(100), maglev.DEFAULT_SIZE),
    ([("a:1", 3), ("b:1", 1), ("c:1", 0), ("d:1", 7)], 1021),
    ([("10.0.0.1:80", 100), ("10.0.0.2:80", 1)], 4093),
    ([("same:1", 1), ("same:1", 2)], 251),
    ([("big:1", 2**33), ("small:1", 2**31)], 251),  # beyond u32: the Python loop
]


@pytest.mark.parametrize(("entries", "size"), CASES)
def test_native_fill_gives_the_python_table(entries: list[tuple[str, int]], size: int) -> None:
    assert maglev._native_fill() is not None, "the C fill did not build (is cc installed?)"
    values = [1000 + 7 * i for i in range(len(entries))]
    native = maglev.build_into(entries, size, values)
    assert list(native) == [values[i] for i in maglev.build(entries, size)]


def test_build_into_without_positive_weight_is_empty() -> None:
    assert len(maglev.build_into([("a:1", 0)], 251, [5])) == 0
    with pytest.raises(ValueError):
        maglev.build_into(backends(2), 1000, [1, 2])


def test_native_fill_refuses_a_cache_folder_others_can_write(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o777)
    cache.chmod(0o777)
    script = (
        "from agent.dataplane import maglev; "
        "print(maglev._native_fill() is None, len(maglev.build_into([('a:1', 1)], 251, [9])))"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        env={**os.environ, "GATEWAYLB_CACHE_DIR": str(cache)},
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    )
    assert out.stdout.split() == ["True", "251"]  # Python fallback, same result
    assert not list(cache.iterdir())


def test_native_fill_of_10k_tables_is_fast() -> None:
    entries = backends(4)
    maglev.build_into(entries, 1021, [1, 2, 3, 4])  # compile outside the timing
    start = time.perf_counter()
    for i in range(10_000):
        maglev.build_into([(f"{i}:{j}", 1) for j in range(4)], 1021, [1, 2, 3, 4])
    took = time.perf_counter() - start
    print(f"10k Maglev tables of 1021 slots (4 backends): {took * 1000:.0f} ms")
    assert took < 5.0
