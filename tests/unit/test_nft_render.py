"""Pure tests of the nftables rendering: weights -> cascade, refuse share, diff,
fingerprints and reading a listed table back.  No root, no kernel."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest

from agent.dataplane import nft_rules as R
from agent.dataplane.frontends import FrontendError, FrontendSpec, normalise
from agent.state import Backend, FrontendSource, L4Frontend

SRC = FrontendSource("ns", "gw", "l")


def fe(backends: list[tuple[str, int, int]], reject: int = 0, proto: str = "tcp") -> L4Frontend:
    return L4Frontend(
        "10.99.0.1", proto, 80, tuple(Backend(ip, p, w) for ip, p, w in backends), reject, SRC
    )


def probabilities(spec: FrontendSpec) -> dict[str, Fraction]:
    """Exact selection probability of each backend through the cascade."""
    left = Fraction(1)
    out: dict[str, Fraction] = {}
    for b, modulus in R.cascade(spec):
        p = Fraction(1) if modulus is None else Fraction(b.weight, modulus)
        out[b.ip] = left * p
        left *= 1 - p
    out["refuse"] = left
    return out


def test_cascade_gives_exact_weighted_split() -> None:
    spec = normalise(fe([("10.20.0.11", 80, 3), ("10.20.0.12", 80, 1), ("10.20.0.13", 80, 6)]))
    probs = probabilities(spec)
    assert probs == {
        "10.20.0.11": Fraction(3, 10),
        "10.20.0.12": Fraction(1, 10),
        "10.20.0.13": Fraction(6, 10),
        "refuse": 0,
    }
    # The last positive backend takes the rest without drawing.
    assert R.cascade(spec)[-1][1] is None


def test_reject_share_is_refused_not_redistributed() -> None:
    spec = normalise(fe([("10.20.0.11", 80, 1), ("10.20.0.12", 80, 1)], reject=2))
    probs = probabilities(spec)
    assert probs["refuse"] == Fraction(1, 2)
    assert probs["10.20.0.11"] == probs["10.20.0.12"] == Fraction(1, 4)
    assert all(modulus is not None for _b, modulus in R.cascade(spec))


def test_no_positive_backend_refuses_everything_but_keeps_backends_known() -> None:
    spec = normalise(fe([("10.20.0.11", 80, 0)]))
    assert R.cascade(spec) == []
    rules = [c["add"]["rule"] for c in R.render_chain_rules(spec)]
    # footer (mark + accept) first, then the dormant weight-0 rule after it
    assert "r=0" in rules[0]["comment"]
    assert {"accept": None} in rules[0]["expr"]
    assert rules[1]["comment"] == "glb b=10.20.0.11,80,0"


def test_rules_use_no_anonymous_sets() -> None:
    spec = normalise(fe([("10.20.0.11", 80, 2), ("10.20.0.12", 80, 5)], reject=1))
    text = repr(R.render_add(spec))
    assert "vmap" not in text and "'set'" not in text
    assert "numgen" in text


def test_normalise_merges_duplicates_and_sorts() -> None:
    spec = normalise(fe([("10.20.0.12", 80, 1), ("10.20.0.11", 80, 2), ("10.20.0.12", 80, 3)]))
    assert spec.backends == (Backend("10.20.0.11", 80, 2), Backend("10.20.0.12", 80, 4))


@pytest.mark.parametrize(
    "bad",
    [
        fe([("fd00::1", 80, 1)]),  # family mismatch
        fe([("10.20.0.11", 0, 1)]),
        fe([("10.20.0.11", 80, -1)]),
        fe([], proto="sctp"),
    ],
)
def test_normalise_rejects_bad_frontends(bad: L4Frontend) -> None:
    with pytest.raises(FrontendError):
        normalise(bad)


def test_fingerprint_changes_with_weights_only_when_content_changes() -> None:
    a = normalise(fe([("10.20.0.11", 80, 1), ("10.20.0.12", 80, 1)]))
    b = normalise(fe([("10.20.0.12", 80, 1), ("10.20.0.11", 80, 1)]))
    c = normalise(fe([("10.20.0.11", 80, 1), ("10.20.0.12", 80, 2)]))
    assert a.fingerprint == b.fingerprint != c.fingerprint


def _spec(vip: str, weight: int = 1) -> FrontendSpec:
    return normalise(
        L4Frontend(vip, "udp", 53, (Backend(vip.replace("99", "20"), 53, weight),), 0, SRC)
    )


def test_plan_touches_only_changed_frontends() -> None:
    old = {s.key: s for s in (_spec("10.99.0.1"), _spec("10.99.0.2"), _spec("10.99.0.3"))}
    new = dict(old)
    changed = _spec("10.99.0.2", weight=5)
    new[changed.key] = changed
    del new[_spec("10.99.0.3").key]
    added = _spec("10.99.0.4")
    new[added.key] = added
    p = R.plan(old, new)
    assert [s.key for s in p.added] == [added.key]
    assert [n.key for _o, n in p.updated] == [changed.key]
    assert [s.key for s in p.removed] == [_spec("10.99.0.3").key]
    assert R.plan(new, new).empty
    cmds = repr(R.render_plan(p))
    assert R.chain_name(_spec("10.99.0.1").key) not in cmds  # untouched


def test_update_flushes_and_rewrites_and_keeps_counters() -> None:
    old = normalise(fe([("10.20.0.11", 80, 1)]))
    new = normalise(fe([("10.20.0.11", 80, 2), ("10.20.0.12", 80, 1)]))
    cmds = R.render_update(old, new)
    table = R.table_of(new.key)
    assert table.startswith("gatewaylb-")
    assert cmds[0] == {
        "flush": {"chain": {"family": "inet", "table": table, "name": R.chain_name(new.key)}}
    }
    # Counters live in the shared sets' elements, which a rewrite leaves alone:
    # the kept backend's element is neither deleted nor re-added.
    assert "counter" not in repr(cmds)
    plan_cmds = R.render_plan(R.Plan((), ((old, new),), ()))
    elements = [c for c in plan_cmds if "element" in next(iter(c.values()))]
    assert elements == [
        {
            "add": {
                "element": {
                    "family": "inet",
                    "table": "gatewaylb",
                    "name": "bcnt4",
                    "elem": [{"concat": ["10.99.0.1", "tcp", 80, "10.20.0.12", 80]}],
                }
            }
        }
    ]


def test_shards_are_stable_and_spread() -> None:
    keys = [(f"10.99.{i // 256}.{i % 256}", "tcp", 80) for i in range(2000)]
    shards = [R.shard_of(k) for k in keys]
    assert all(0 <= s < R.SHARDS for s in shards)
    counts = [shards.count(s) for s in range(R.SHARDS)]
    assert min(counts) > 0.5 * len(keys) / R.SHARDS  # no starved shard
    # crc32 of a fixed text: the same on every run and Python version
    assert R.shard_of(("10.99.0.1", "tcp", 80)) == R.shard_of(("10.99.0.1", "tcp", 80))
    assert R.table_of(keys[0]) == f"gatewaylb-{R.shard_of(keys[0]):02d}"
    assert R.is_our_table("gatewaylb") and R.is_our_table("gatewaylb-07")
    assert not R.is_our_table("gatewaylbx") and not R.is_our_table("kube-proxy")


def test_frontend_objects_live_in_their_shard_and_no_verdict_in_shared_table() -> None:
    spec = normalise(fe([("10.20.0.11", 80, 1)]))
    cmds = R.render_plan(R.plan({}, {spec.key: spec}))
    for c in cmds:
        ((_op, body),) = c.items()
        ((kind, obj),) = body.items()
        if kind in ("chain", "rule") or obj.get("name") in ("fe4", "fe6"):
            assert obj["table"] == R.table_of(spec.key)
        else:
            assert obj["table"] == R.TABLE and obj["name"] in ("fcnt4", "bcnt4")
            assert "goto" not in repr(obj)


def test_removed_backends_ignores_weight_zero() -> None:
    old = normalise(fe([("10.20.0.11", 80, 1), ("10.20.0.12", 80, 1)]))
    new = normalise(fe([("10.20.0.11", 80, 0)]))
    assert R.removed_backends(old, new) == {("10.20.0.12", 80)}
    assert R.removed_backends(old, None) == {("10.20.0.11", 80), ("10.20.0.12", 80)}


def _as_listing(cmds: list[R.Cmd]) -> dict[str, Any]:
    """What `list table` would print after applying `cmds` to an empty table."""
    items: list[dict[str, Any]] = []
    maps: dict[tuple[str, str], dict[str, Any]] = {}
    for c in cmds:
        ((op, body),) = c.items()
        ((kind, obj),) = body.items()
        if op != "add":
            continue
        where = (obj.get("table"), obj.get("name"))
        if kind in ("map", "set"):
            maps[where] = {kind: {**obj, "elem": []}}
            items.append(maps[where])
        elif kind == "element":
            (mk,) = maps[where]
            counted = "stmt" in maps[where][mk]
            maps[where][mk]["elem"] += [
                {"elem": {"val": e, "counter": {"packets": 0, "bytes": 0}}} if counted else e
                for e in obj["elem"]
            ]
        elif kind in ("chain", "rule"):
            items.append({kind: obj})
    return {"nftables": items}


def test_parse_table_round_trip_and_detects_tampering() -> None:
    specs = {
        s.key: s
        for s in (
            normalise(fe([("10.20.0.11", 80, 3), ("10.20.0.12", 80, 0)], reject=1)),
            normalise(
                L4Frontend("fd00:99::1", "udp", 53, (Backend("fd00:20::11", 53, 1),), 0, SRC)
            ),
        )
    }
    cmds = R.render_skeleton() + R.render_plan(R.plan({}, specs))
    cmds += R.render_masq_diff(set(), R.masq_ips(specs.values()))
    parsed = R.parse_table(_as_listing(cmds))
    assert parsed.skeleton_ok
    assert parsed.specs == specs
    assert parsed.broken == {}
    assert parsed.masq == {"10.20.0.11", "10.20.0.12", "fd00:20::11"}

    # A hand-edited weight no longer matches the footer's fingerprint.
    listing = _as_listing(cmds)
    for item in listing["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment") == "glb b=10.20.0.11,80,3":
            rule["comment"] = "glb b=10.20.0.11,80,4"
    parsed = R.parse_table(listing)
    key = ("10.99.0.1", "tcp", 80)
    assert key not in parsed.specs
    assert parsed.broken == {R.chain_name(key): key}
    repair = R.render_repair(key, specs[key], parsed.elements)
    assert repair[1]["flush"]["chain"]["name"] == R.chain_name(key)
    assert repair[1]["flush"]["chain"]["table"] == R.table_of(key)


def test_parse_reads_counters_and_flags_a_foreign_layout() -> None:
    spec = normalise(fe([("10.20.0.11", 80, 3), ("10.20.0.12", 80, 0)]))
    cmds = R.render_skeleton() + R.render_plan(R.plan({}, {spec.key: spec}))
    parsed = R.parse_table(_as_listing(cmds))
    assert parsed.frontend_counts == {spec.key: (0, 0)}
    assert parsed.backend_counts == {
        spec.key: {("10.20.0.11", 80): (0, 0), ("10.20.0.12", 80): (0, 0)}
    }
    assert parsed.counter_state() == {spec.key: (True, R.backend_keys(spec))}
    assert parsed.shards_ok() == set(range(R.SHARDS))
    # The single-table layout of skeleton v1 is not ours to adopt.
    listing = _as_listing(cmds)
    for item in listing["nftables"]:
        rule = item.get("rule")
        if rule and rule.get("comment") == R.SKELETON_TAG and rule["table"] == R.TABLE:
            rule["comment"] = "glb skeleton v1"
    assert not R.parse_table(listing).skeleton_ok


# -- nft text ------------------------------------------------------------------------------

_TEXT_SPECS = [
    fe([("10.20.0.11", 80, 3), ("10.20.0.12", 80, 0), ("10.20.0.13", 81, 1)], reject=2),
    fe([("10.20.0.11", 80, 0)], proto="udp"),
    fe([]),
    L4Frontend("fd00:99::1", "udp", 53, (Backend("fd00:20::11", 53, 2),), 1, SRC),
    L4Frontend(
        "fd00:99::2",
        "tcp",
        443,
        (Backend("fd00:20::11", 8443, 1), Backend("fd00:20::12", 8443, 0)),
        0,
        SRC,
    ),
]


@pytest.mark.parametrize("frontend", _TEXT_SPECS)
def test_direct_text_equals_translated_json(frontend: L4Frontend) -> None:
    spec = normalise(frontend)
    assert R.chain_rules_text(spec) == R.text_lines(R.render_chain_rules(spec))


def test_plan_text_writes_what_the_json_plan_writes() -> None:
    """Same element commands; each chain's rules in the same order (as a block)."""
    specs = [normalise(f) for f in _TEXT_SPECS]
    old = normalise(fe([("10.20.0.11", 80, 1)], proto="udp"))
    gone = normalise(L4Frontend("10.99.0.9", "tcp", 80, (Backend("10.20.0.14", 80, 1),), 0, SRC))
    p = R.Plan(tuple(s for s in specs if s.key != old.key), ((old, specs[1]),), (gone,))
    flat = R.text_lines(R.render_plan(p))
    lines = R.render_plan_lines(p)
    assert [x for x in lines if "element" in x] == [x for x in flat if "element" in x]
    assert [x for x in lines if x.startswith(("flush", "delete"))] == [
        x for x in flat if x.startswith(("flush", "delete"))
    ]
    blocks = "\n".join(x for x in lines if x.startswith("table "))
    for spec in [*p.added, specs[1]]:
        body = "".join(f"\t\t{r.split(' ', 5)[5]}\n" for r in R.chain_rules_text(spec))
        assert f"\tchain {R.chain_name(spec.key)} {{\n{body}\t}}" in blocks
    # elements before the chains that need none, verdicts after their chains
    first_block = next(i for i, x in enumerate(lines) if x.startswith("table "))
    assert all("fe4" not in x and "fe6" not in x for x in lines[:first_block])


@pytest.mark.parametrize("comment", ['a"b', "a;b", "a\nb", "a{b", "x" * 200])
def test_text_refuses_what_it_cannot_quote(comment: str) -> None:
    with pytest.raises(R.TextError):
        R.quote(comment)
    cmd = {
        "add": {
            "rule": {"family": "inet", "table": "t", "chain": "c", "expr": [], "comment": comment}
        }
    }
    with pytest.raises(R.TextError):
        R.to_text([cmd])


def test_text_refuses_unknown_vocabulary() -> None:
    bad = [
        {"add": {"rule": {"family": "inet", "table": "t", "chain": "c", "expr": [{"log": None}]}}},
        {"insert": {"table": {"family": "inet", "name": "t"}}},
        {"add": {"table": {"family": "ip", "name": "t"}}},
        {"add": {"element": {"family": "inet", "table": "t", "name": "s", "elem": ["1.2.3.4 }"]}}},
        {"delete": {"chain": {"family": "inet", "table": "t", "name": "c; flush ruleset"}}},
    ]
    for cmd in bad:
        with pytest.raises(R.TextError):
            R.to_text([cmd])


def test_adoption_refuses_non_canonical_addresses_in_comments() -> None:
    spec = normalise(fe([("10.20.0.11", 80, 1)]))
    comments = [R.backend_comment(b) for b in spec.backends] + [R.footer_comment(spec)]
    assert R._parse_chain(spec.key, comments) == spec
    tampered = [c.replace("10.20.0.11", "10.20.0.011") for c in comments]
    assert R._parse_chain(spec.key, tampered) is None


def test_footer_rides_on_the_last_dnat_when_nothing_is_refused() -> None:
    spec = normalise(fe([("10.20.0.11", 80, 1), ("10.20.0.12", 80, 3), ("10.20.0.13", 80, 0)]))
    rules = [c["add"]["rule"] for c in R.render_chain_rules(spec)]
    # two cascade rules, then the dormant weight-0 one: no separate footer
    assert [r["comment"] for r in rules] == [
        "glb b=10.20.0.11,80,1",
        f"glb b=10.20.0.12,80,3 r=0 fp={spec.fingerprint}",
        "glb b=10.20.0.13,80,0",
    ]
    assert not any("mangle" in repr(r["expr"]) for r in rules)
    assert R._parse_chain(spec.key, [r["comment"] for r in rules]) == spec
    # Chains written with a separate footer (earlier versions) are still adopted.
    separate = ["glb b=10.20.0.11,80,1", "glb b=10.20.0.12,80,3", R.footer_comment(spec)]
    assert R._parse_chain(spec.key, [*separate, "glb b=10.20.0.13,80,0"]) == spec
    # A reject share keeps the marking footer.
    refusing = normalise(fe([("10.20.0.11", 80, 1)], reject=1))
    last = R.render_chain_rules(refusing)[-1]["add"]["rule"]
    assert last["comment"] == R.footer_comment(refusing) and "mangle" in repr(last["expr"])
