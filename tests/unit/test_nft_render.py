"""Pure tests of the nftables rendering: weights -> cascade, refuse share, diff,
fingerprints, the nft text and reading a table back (through FakeNft).  No root,
no kernel."""

from __future__ import annotations

from fractions import Fraction

import pytest

from agent.dataplane.frontends import FrontendError, FrontendSpec, normalise
from agent.dataplane.nft import layout as R
from agent.dataplane.nft import plan as P
from agent.dataplane.nft import render
from agent.dataplane.nft.fake import FakeNft
from agent.dataplane.nft.objects import Chain, Elements, Rules, Set, Table, Transaction
from agent.dataplane.nft.parse import parse, parse_chain
from agent.dataplane.nft.state import Debris, NftState
from agent.state import Backend, FrontendKey, FrontendSource, L4Frontend

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
    rules = render.chain_body(spec)
    # footer (mark + accept) first, then the dormant weight-0 rule after it
    assert "r=0" in rules[0][1]
    assert rules[0][0].split()[-1] == "accept"
    assert rules[1][1] == "glb b=10.20.0.11,80,0"


def test_rules_use_no_anonymous_sets() -> None:
    spec = normalise(fe([("10.20.0.11", 80, 2), ("10.20.0.12", 80, 5)], reject=1))
    text = render.text(Transaction([("add", render.frontend_chain(spec))]))
    # an anonymous set or map would be a brace (or a vmap) inside a rule
    assert all("{" not in stmt and "vmap" not in stmt for stmt, _c in render.chain_body(spec))
    assert "vmap" not in text
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
    p = P.plan(old, new)
    assert [s.key for s in p.added] == [added.key]
    assert [n.key for _o, n in p.updated] == [changed.key]
    assert [s.key for s in p.removed] == [_spec("10.99.0.3").key]
    assert P.plan(new, new).empty
    cmds = render.text(P.frontends(p))
    assert R.chain_name(_spec("10.99.0.1").key) not in cmds  # untouched


def test_update_flushes_and_rewrites_and_keeps_counters() -> None:
    old = normalise(fe([("10.20.0.11", 80, 1)]))
    new = normalise(fe([("10.20.0.11", 80, 2), ("10.20.0.12", 80, 1)]))
    ops = P.frontends(P.Plan((), ((old, new),), ())).ops
    table = R.table_of(new.key)
    assert table.startswith("gatewaylb-")
    chains = [(verb, obj) for verb, obj in ops if isinstance(obj, Chain)]
    assert chains == [
        ("flush", Chain(table, R.chain_name(new.key))),
        ("add", render.frontend_chain(new)),
    ]
    # Counters live in the shared sets' elements, which a rewrite leaves alone:
    # the kept backend's element is neither deleted nor re-added.
    assert "counter" not in repr(chains)
    elements = [(verb, obj) for verb, obj in ops if isinstance(obj, Elements)]
    assert elements == [
        ("add", Elements("gatewaylb", "bcnt4", (("10.99.0.1", "tcp", 80, "10.20.0.12", 80),)))
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
    for _verb, obj in P.frontends(P.plan({}, {spec.key: spec})):
        assert isinstance(obj, Chain | Elements)
        if isinstance(obj, Chain) or obj.set in ("fe4", "fe6"):
            assert obj.table == R.table_of(spec.key)
        else:
            assert obj.table == R.TABLE and obj.set in ("fcnt4", "bcnt4")
            assert not obj.goto and "goto" not in repr(obj.elems)


def test_removed_backends_ignores_weight_zero() -> None:
    old = normalise(fe([("10.20.0.11", 80, 1), ("10.20.0.12", 80, 1)]))
    new = normalise(fe([("10.20.0.11", 80, 0)]))
    assert R.removed_backends(old, new) == {("10.20.0.12", 80)}
    assert R.removed_backends(old, None) == {("10.20.0.11", 80), ("10.20.0.12", 80)}


def _programmed(specs: dict[FrontendKey, FrontendSpec]) -> FakeNft:
    """What the kernel would hold after writing `specs` from scratch."""
    nft = FakeNft()
    nft.apply(P.change(NftState(), specs).tx)
    return nft


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
    nft = _programmed(specs)
    parsed = parse(nft.read(nft.tables()))
    assert parsed.skeleton_ok
    assert parsed.specs == specs
    assert parsed.broken == {}
    assert parsed.masq == {"10.20.0.11", "10.20.0.12", "fd00:20::11"}

    # A hand-edited weight no longer matches the footer's fingerprint.
    key = ("10.99.0.1", "tcp", 80)
    rules = nft.chain_rules(R.table_of(key), R.chain_name(key))
    for i, (stmt, comment) in enumerate(rules):
        if comment == "glb b=10.20.0.11,80,3":
            rules[i] = (stmt, "glb b=10.20.0.11,80,4")
    parsed = parse(nft.read(nft.tables()))
    assert key not in parsed.specs
    assert parsed.broken == {R.chain_name(key): key}
    state = NftState(
        specs=parsed.specs,
        current=parsed.current(),
        debris=Debris(parsed.broken, parsed.chain_tables, frozenset(parsed.elements)),
    )
    repair = P.change(state, specs).tx.ops
    where = Chain(R.table_of(key), R.chain_name(key))
    i = repair.index(("flush", where))
    assert repair[i - 1] == ("add", where)
    nft.apply(P.change(state, specs).tx)
    assert parse(nft.read(nft.tables())).specs == specs


def test_parse_reads_counters_and_flags_a_foreign_layout() -> None:
    spec = normalise(fe([("10.20.0.11", 80, 3), ("10.20.0.12", 80, 0)]))
    nft = _programmed({spec.key: spec})
    parsed = parse(nft.read(nft.tables()))
    assert parsed.frontend_counts == {spec.key: (0, 0)}
    assert parsed.backend_counts == {
        spec.key: {("10.20.0.11", 80): (0, 0), ("10.20.0.12", 80): (0, 0)}
    }
    assert parsed.counter_state() == {spec.key: (True, R.backend_keys(spec))}
    assert parsed.shards_ok() == set(range(R.SHARDS))
    # The single-table layout of skeleton v1 is not ours to adopt.
    rules = nft.chain_rules(R.TABLE, "nat_post")
    rules[0] = (rules[0][0], "glb skeleton v1")
    assert not parse(nft.read(nft.tables())).skeleton_ok


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
def test_chain_text_reads_back_as_its_spec(frontend: L4Frontend) -> None:
    """(Was: the direct text equals the translated JSON; the JSON renderer is gone.)
    Every rule is written with its comment, and the comments rebuild the spec."""
    spec = normalise(frontend)
    body = render.chain_body(spec)
    text = render.text(Transaction([("add", Rules("t", "c", body))]))
    assert text.splitlines() == [
        f'add rule inet t c {stmt} comment "{comment}"' for stmt, comment in body
    ]
    assert parse_chain(spec.key, [c for _s, c in body]) == spec


def test_chain_text_is_what_the_kernel_was_always_given() -> None:
    """The exact text, as written since the nft text writes were introduced."""
    tcp = normalise(_TEXT_SPECS[0])
    v6 = normalise(_TEXT_SPECS[4])
    assert render.text(Transaction([("add", render.frontend_rules(tcp))])) == (
        "add rule inet gatewaylb-13 fe_4_0a630001_t_80 numgen random mod 6 < 3"
        ' meta l4proto tcp dnat ip to 10.20.0.11:80 comment "glb b=10.20.0.11,80,3"\n'
        "add rule inet gatewaylb-13 fe_4_0a630001_t_80 numgen random mod 3 < 1"
        ' meta l4proto tcp dnat ip to 10.20.0.13:81 comment "glb b=10.20.0.13,81,1"\n'
        "add rule inet gatewaylb-13 fe_4_0a630001_t_80 meta mark set meta mark | 0x00400000"
        ' accept comment "glb r=2 fp=29dbef933a26e38c"\n'
        "add rule inet gatewaylb-13 fe_4_0a630001_t_80"
        ' meta l4proto tcp dnat ip to 10.20.0.12:80 comment "glb b=10.20.0.12,80,0"\n'
    )
    assert render.text(Transaction([("add", render.frontend_rules(v6))])) == (
        "add rule inet gatewaylb-14 fe_6_fd000099000000000000000000000002_t_443"
        " meta l4proto tcp dnat ip6 to [fd00:20::11]:8443"
        ' comment "glb b=fd00:20::11,8443,1 r=0 fp=c177cd6b61e986bb"\n'
        "add rule inet gatewaylb-14 fe_6_fd000099000000000000000000000002_t_443"
        ' meta l4proto tcp dnat ip6 to [fd00:20::12]:8443 comment "glb b=fd00:20::12,8443,0"\n'
    )


def test_plan_text_is_one_block_per_shard_in_order() -> None:
    """(Was: the text plan writes what the JSON plan writes.)  Element batches,
    flushes, one block per shard table, verdicts after their chains, deletions."""
    old = normalise(fe([("10.20.0.11", 80, 1)], proto="udp"))
    new = normalise(fe([("10.20.0.11", 80, 2), ("10.20.0.12", 80, 1)], proto="udp"))
    gone = normalise(L4Frontend("fd00:99::9", "tcp", 80, (Backend("fd00:20::14", 80, 1),), 0, SRC))
    added = normalise(_TEXT_SPECS[0])
    lines = render.lines(P.frontends(P.Plan((added,), ((old, new),), (gone,))))
    assert "\n".join(lines) + "\n" == (
        "add element inet gatewaylb bcnt4 { 10.99.0.1 . tcp . 80 . 10.20.0.11 . 80,"
        " 10.99.0.1 . tcp . 80 . 10.20.0.12 . 80, 10.99.0.1 . tcp . 80 . 10.20.0.13 . 81,"
        " 10.99.0.1 . udp . 80 . 10.20.0.12 . 80 }\n"
        "add element inet gatewaylb fcnt4 { 10.99.0.1 . tcp . 80 }\n"
        "flush chain inet gatewaylb-08 fe_4_0a630001_u_80\n"
        "table inet gatewaylb-08 {\n\tchain fe_4_0a630001_u_80 {\n"
        "\t\tnumgen random mod 3 < 2 meta l4proto udp dnat ip to 10.20.0.11:80"
        ' comment "glb b=10.20.0.11,80,2"\n'
        "\t\tmeta l4proto udp dnat ip to 10.20.0.12:80"
        ' comment "glb b=10.20.0.12,80,1 r=0 fp=a1db869cfcca8028"\n\t}\n}\n'
        "table inet gatewaylb-13 {\n\tchain fe_4_0a630001_t_80 {\n"
        "\t\tnumgen random mod 6 < 3 meta l4proto tcp dnat ip to 10.20.0.11:80"
        ' comment "glb b=10.20.0.11,80,3"\n'
        "\t\tnumgen random mod 3 < 1 meta l4proto tcp dnat ip to 10.20.0.13:81"
        ' comment "glb b=10.20.0.13,81,1"\n'
        "\t\tmeta mark set meta mark | 0x00400000 accept"
        ' comment "glb r=2 fp=29dbef933a26e38c"\n'
        "\t\tmeta l4proto tcp dnat ip to 10.20.0.12:80"
        ' comment "glb b=10.20.0.12,80,0"\n\t}\n}\n'
        "add element inet gatewaylb-13 fe4 { 10.99.0.1 . tcp . 80 : goto fe_4_0a630001_t_80 }\n"
        "delete element inet gatewaylb-10 fe6 { fd00:99::9 . tcp . 80 }\n"
        "flush chain inet gatewaylb-10 fe_6_fd000099000000000000000000000009_t_80\n"
        "delete chain inet gatewaylb-10 fe_6_fd000099000000000000000000000009_t_80\n"
        "delete element inet gatewaylb bcnt6 { fd00:99::9 . tcp . 80 . fd00:20::14 . 80 }\n"
        "delete element inet gatewaylb fcnt6 { fd00:99::9 . tcp . 80 }\n"
    )
    # elements before the chains that need none, verdicts after their chains
    first_block = next(i for i, x in enumerate(lines) if x.startswith("table "))
    assert all("fe4" not in x and "fe6" not in x for x in lines[:first_block])


def test_skeleton_text() -> None:
    text = render.text(render.skeleton())
    assert text.count("add table inet ") == 1 + R.SHARDS
    assert text.startswith(
        "add table inet gatewaylb\n"
        "add set inet gatewaylb masq4 { type ipv4_addr; }\n"
        "add set inet gatewaylb fcnt4 { type ipv4_addr . inet_proto . inet_service; counter; }\n"
    )
    assert (
        "add chain inet gatewaylb-03 nat_pre { type nat hook prerouting priority -100;"
        " policy accept; }\n"
        "flush chain inet gatewaylb-03 nat_pre\n"
        "add rule inet gatewaylb-03 nat_pre ip daddr . meta l4proto . th dport vmap @fe4"
        ' comment "glb skeleton v2 shards=16 hash=crc32"\n'
        "add rule inet gatewaylb-03 nat_pre ip6 daddr . meta l4proto . th dport vmap @fe6\n"
    ) in text
    assert (
        "add rule inet gatewaylb refuse_pre meta mark & 0x00400000 == 0x00400000"
        ' meta l4proto tcp reject with tcp reset comment "glb skeleton v2 shards=16 hash=crc32"\n'
        "add rule inet gatewaylb refuse_pre meta mark & 0x00400000 == 0x00400000"
        " reject with icmpx type port-unreachable\n"
    ) in text


@pytest.mark.parametrize("comment", ['a"b', "a;b", "a\nb", "a{b", "x" * 200])
def test_text_refuses_what_it_cannot_quote(comment: str) -> None:
    with pytest.raises(render.TextError):
        render.quote(comment)
    with pytest.raises(render.TextError):
        render.text(Transaction([("add", Rules("t", "c", (("accept", comment),)))]))


def test_text_refuses_unknown_vocabulary() -> None:
    bad: list[Transaction] = [
        Transaction([("flush", Table("t"))]),
        Transaction([("flush", Elements("t", "s", (("1.2.3.4",),)))]),
        Transaction([("delete", Set("t", "s", "ipv4_addr"))]),
        Transaction([("add", Set("t", "s", "ipv4_addr; flush ruleset"))]),
        Transaction([("add", Elements("t", "s", (("1.2.3.4 }",),)))]),
        Transaction([("delete", Chain("t", "c; flush ruleset"))]),
        Transaction([("add", Table("t }"))]),
        Transaction([("delete", Chain("t", "c", body=(("accept", ""),)))]),
    ]
    for tx in bad:
        with pytest.raises(render.TextError):
            render.text(tx)


def test_adoption_refuses_non_canonical_addresses_in_comments() -> None:
    spec = normalise(fe([("10.20.0.11", 80, 1)]))
    comments = [R.backend_comment(b) for b in spec.backends] + [R.footer_comment(spec)]
    assert parse_chain(spec.key, comments) == spec
    tampered = [c.replace("10.20.0.11", "10.20.0.011") for c in comments]
    assert parse_chain(spec.key, tampered) is None


def test_footer_rides_on_the_last_dnat_when_nothing_is_refused() -> None:
    spec = normalise(fe([("10.20.0.11", 80, 1), ("10.20.0.12", 80, 3), ("10.20.0.13", 80, 0)]))
    rules = render.chain_body(spec)
    # two cascade rules, then the dormant weight-0 one: no separate footer
    assert [c for _s, c in rules] == [
        "glb b=10.20.0.11,80,1",
        f"glb b=10.20.0.12,80,3 r=0 fp={spec.fingerprint}",
        "glb b=10.20.0.13,80,0",
    ]
    assert not any("meta mark set" in s for s, _c in rules)
    assert parse_chain(spec.key, [c for _s, c in rules]) == spec
    # Chains written with a separate footer (earlier versions) are still adopted.
    separate = ["glb b=10.20.0.11,80,1", "glb b=10.20.0.12,80,3", R.footer_comment(spec)]
    assert parse_chain(spec.key, [*separate, "glb b=10.20.0.13,80,0"]) == spec
    # A reject share keeps the marking footer.
    refusing = normalise(fe([("10.20.0.11", 80, 1)], reject=1))
    last = render.chain_body(refusing)[-1]
    assert last[1] == R.footer_comment(refusing) and "meta mark set" in last[0]
