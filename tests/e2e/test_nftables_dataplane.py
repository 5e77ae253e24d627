"""The nftables dataplane in the real kernel, inside a lab (network namespaces).

One lab for the module: client -- node -- 3 echo backends.  The dataplane is
made and driven in a thread parked in the node's namespace; traffic comes from
threads parked in the client, node or a backend namespace.  Bounds are generous
and measured figures are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import socket
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import nftables
import pytest

from agent.dataplane.frontends import FrontendSpec, normalise
from agent.dataplane.nft import layout as R
from agent.dataplane.nft import plan as P
from agent.dataplane.nft import render
from agent.dataplane.nft.dataplane import NftablesDataplane
from agent.dataplane.nft.fake import FakeNft
from agent.dataplane.nft.objects import Chain, Counts, Listing, RuleText, Transaction
from agent.dataplane.nft.parse import ParsedTable
from agent.dataplane.nft.state import NftState
from agent.dataplane.nft.transport import KernelNft
from agent.lab import Lab, vip4, vip6
from agent.state import Backend, DesiredState, FrontendSource, L4Frontend

pytestmark = pytest.mark.root

SRC = FrontendSource("ns", "gw", "l")
PORT = 8080  # every echo backend listens here (TCP and UDP)
BE = {1: "10.20.0.11", 2: "10.20.0.12", 3: "10.20.0.13"}
BE6 = {1: "fd00:20::11", 2: "fd00:20::12", 3: "fd00:20::13"}


def frontend(
    vip: str, port: int, weights: dict[int, int], reject: int = 0, proto: str = "tcp"
) -> L4Frontend:
    table = BE6 if ":" in vip else BE
    backends = tuple(Backend(table[i], PORT, w) for i, w in weights.items())
    return L4Frontend(vip, proto, port, backends, reject, SRC)


def state(*fes: L4Frontend) -> DesiredState:
    return DesiredState(l4=fes)


# -- traffic helpers (run inside a namespace thread) -----------------------------------


def tcp_ask(addr: str, port: int, timeout: float = 1.0) -> str:
    """The backend name that answered, or the failure kind."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((addr, port))
            s.sendall(b"hi\n")
            return s.recv(200).decode().split()[0]
    except ConnectionRefusedError:
        return "refused"
    except TimeoutError:
        return "timeout"


def tcp_many(addr: str, port: int, n: int) -> Counter[str]:
    return Counter(tcp_ask(addr, port) for _ in range(n))


def udp_ask(addr: str, port: int, sock: socket.socket | None = None) -> str:
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    own = sock is None
    s = sock or socket.socket(family, socket.SOCK_DGRAM)
    try:
        s.settimeout(1.0)
        s.connect((addr, port))
        s.send(b"hi")
        return s.recv(200).decode().split()[0]
    except ConnectionRefusedError:  # ICMP port unreachable on a connected socket
        return "refused"
    except TimeoutError:
        return "timeout"
    finally:
        if own:
            s.close()


def nft_list_chain(key: tuple[str, str, int]) -> list[dict[str, Any]]:
    """The rules of a frontend's chain, in its shard table."""
    nft = nftables.Nftables()
    nft.set_json_output(True)
    nft.set_handle_output(True)
    ref = {"family": "inet", "table": R.table_of(key), "name": R.chain_name(key)}
    rc, out, err = nft.json_cmd({"nftables": [{"list": {"chain": ref}}]})
    assert rc == 0, err
    return [i["rule"] for i in out["nftables"] if "rule" in i]


def tables() -> list[str]:
    nft = nftables.Nftables()
    nft.set_json_output(True)
    rc, out, _err = nft.json_cmd({"nftables": [{"list": {"tables": {}}}]})
    assert rc == 0
    return [t["table"]["name"] for t in out["nftables"] if "table" in t]


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab(backends=3) as lab:
        for b in lab.backends:
            lab.start_echo(b, tcp=PORT, udp=PORT)
        yield lab


@pytest.fixture()
def dp(lab: Lab) -> Iterator[NftablesDataplane]:
    dp = lab.call(lab.node, NftablesDataplane)
    yield dp
    lab.call(lab.node, dp.cleanup)


def apply(lab: Lab, dp: NftablesDataplane, desired: DesiredState) -> None:
    result = lab.call(lab.node, dp.reconcile, desired)
    assert result.failures == ()


# -- tests -----------------------------------------------------------------------------------


def test_tcp_and_udp_reach_backends_v4_and_v6(lab: Lab, dp: NftablesDataplane) -> None:
    apply(
        lab,
        dp,
        state(
            frontend(vip4(1), 80, {1: 1, 2: 1}),
            frontend(vip4(1), 53, {3: 1}, proto="udp"),
            frontend(vip6(1), 80, {1: 1}),
            frontend(vip6(1), 53, {2: 1}, proto="udp"),
        ),
    )
    assert set(lab.call(lab.client, tcp_many, vip4(1), 80, 20)) <= {"be1", "be2"}
    assert lab.call(lab.client, udp_ask, vip4(1), 53) == "be3"
    # The first IPv6 packet through a fresh lab can wait for neighbour
    # discovery past TCP's 1 s SYN retransmission: allow for one retry.
    assert lab.call(lab.client, tcp_ask, vip6(1), 80, 3.5) == "be1"
    udp6 = [lab.call(lab.client, udp_ask, vip6(1), 53) for _ in range(3)]
    assert "be2" in udp6 and set(udp6) <= {"be2", "timeout"}
    counters = {(c.vip, c.protocol, c.port): c for c in lab.call(lab.node, dp.read_counters)}
    c = counters[(vip4(1), "tcp", 80)]
    assert sum(c.backend_connections.values()) == 20
    assert c.packets >= 20 * 4 and c.bytes > 0  # SYN, ACK, data, FIN... per connection
    print(f"\nfrontend tcp/80 packets={c.packets} bytes={c.bytes} {c.backend_connections}")


def test_weighted_split_and_weight_zero(lab: Lab, dp: NftablesDataplane) -> None:
    apply(lab, dp, state(frontend(vip4(2), 80, {1: 1, 2: 3, 3: 0})))
    t0 = time.perf_counter()
    got = lab.call(lab.client, tcp_many, vip4(2), 80, 1000)
    elapsed = time.perf_counter() - t0
    print(f"\n1000 connections in {elapsed:.2f}s: {dict(got)} (expected 250/750/0)")
    assert got["be3"] == 0
    # binomial(1000, 0.25): sd ~13.7; +-70 is five sd
    assert 180 <= got["be1"] <= 320 and got["be1"] + got["be2"] == 1000
    (c,) = lab.call(lab.node, dp.read_counters)
    assert c.backend_connections == {
        (BE[1], PORT): got["be1"],
        (BE[2], PORT): got["be2"],
        (BE[3], PORT): 0,
    }


def test_reject_share_and_empty_frontend_are_refused(lab: Lab, dp: NftablesDataplane) -> None:
    apply(
        lab,
        dp,
        state(
            frontend(vip4(3), 80, {1: 1}, reject=1),
            frontend(vip4(3), 81, {}),
            frontend(vip4(3), 82, {2: 0}),
            frontend(vip4(3), 53, {}, proto="udp"),
            frontend(vip4(3), 54, {1: 1}, reject=3, proto="udp"),
        ),
    )
    got = lab.call(lab.client, tcp_many, vip4(3), 80, 200)
    print(f"\nreject share 1/2: {dict(got)}")
    assert set(got) == {"be1", "refused"} and 60 <= got["refused"] <= 140
    # Refused means a TCP reset (ConnectionRefusedError), never a timeout.
    assert lab.call(lab.client, tcp_many, vip4(3), 81, 10) == Counter(refused=10)
    assert lab.call(lab.client, tcp_many, vip4(3), 82, 10) == Counter(refused=10)
    # UDP: ICMP port unreachable reaches the client as ECONNREFUSED.
    assert lab.call(lab.client, udp_ask, vip4(3), 53) == "refused"
    udp = Counter(lab.call(lab.client, udp_ask, vip4(3), 54) for _ in range(40))
    assert set(udp) == {"be1", "refused"} and udp["refused"] >= 20
    # Node-local clients are refused the same way (output hook).
    assert lab.call(lab.node, tcp_ask, vip4(3), 81) == "refused"


def test_edit_rewrites_only_the_changed_frontend(lab: Lab, dp: NftablesDataplane) -> None:
    a = frontend(vip4(4), 80, {1: 1})
    b = frontend(vip4(5), 80, {2: 1})
    apply(lab, dp, state(a, b))
    lab.call(lab.client, tcp_many, vip4(5), 80, 5)
    b_rules = lab.call(lab.node, nft_list_chain, b.key)
    before = dp.transactions

    t0 = time.perf_counter()
    apply(lab, dp, state(frontend(vip4(4), 80, {1: 1, 3: 2}), b))
    edit_ms = 1000 * (time.perf_counter() - t0)
    assert dp.transactions == before + 1
    # B's rules: same handles, same counters (nothing rewritten)
    assert lab.call(lab.node, nft_list_chain, b.key) == b_rules
    assert set(lab.call(lab.client, tcp_many, vip4(4), 80, 30)) == {"be1", "be3"}

    t0 = time.perf_counter()
    result = lab.call(lab.node, dp.reconcile, state(frontend(vip4(4), 80, {1: 1, 3: 2}), b))
    noop_ms = 1000 * (time.perf_counter() - t0)
    assert result.changed == 0 and dp.transactions == before + 1
    print(f"\nedit {edit_ms:.1f} ms, no-op {noop_ms:.2f} ms (small table)")


def test_established_tcp_survives_weight_zero(lab: Lab, dp: NftablesDataplane) -> None:
    apply(lab, dp, state(frontend(vip4(6), 80, {1: 1})))

    def hold() -> socket.socket:
        s = socket.create_connection((vip4(6), 80), timeout=1)
        s.sendall(b"x")
        assert s.recv(100).startswith(b"be1")
        return s

    conn = lab.call(lab.client, hold)
    try:
        apply(lab, dp, state(frontend(vip4(6), 80, {1: 0, 2: 1})))
        conn.sendall(b"still there?")
        assert conn.recv(100).startswith(b"be1")
        assert lab.call(lab.client, tcp_many, vip4(6), 80, 10) == Counter(be2=10)
    finally:
        conn.close()


def test_adoption_changes_nothing_and_counters_continue(lab: Lab, dp: NftablesDataplane) -> None:
    desired = state(
        frontend(vip4(7), 80, {1: 1, 2: 0}, reject=1), frontend(vip4(8), 53, {3: 1}, proto="udp")
    )
    apply(lab, dp, desired)
    lab.call(lab.client, tcp_many, vip4(7), 80, 20)
    before = {(c.vip, c.port): c for c in lab.call(lab.node, dp.read_counters)}

    again = lab.call(lab.node, NftablesDataplane)
    assert lab.call(lab.node, again.programmed) == lab.call(lab.node, dp.programmed)
    result = lab.call(lab.node, again.reconcile, desired)
    assert result.changed == 0 and again.transactions == 0
    lab.call(lab.client, tcp_many, vip4(7), 80, 20)
    after = {(c.vip, c.port): c for c in lab.call(lab.node, again.read_counters)}
    k = (vip4(7), 80)
    assert after[k].packets > before[k].packets
    new_flows = sum(after[k].backend_connections.values()) - sum(
        before[k].backend_connections.values()
    )
    assert 0 < new_flows <= 20
    progs = {(p.vip, p.port): p for p in lab.call(lab.node, again.programmed)}
    assert progs[k].backends == ((BE[1], PORT, 1), (BE[2], PORT, 0))
    assert progs[k].reject_weight == 1


def test_node_local_client_and_hairpin(lab: Lab, dp: NftablesDataplane) -> None:
    apply(lab, dp, state(frontend(vip4(9), 80, {1: 1}), frontend(vip6(9), 80, {1: 1})))
    assert lab.call(lab.node, tcp_ask, vip4(9), 80) == "be1"
    assert lab.call(lab.node, tcp_ask, vip6(9), 80) == "be1"
    # be1 reaching its own VIP and being picked: masqueraded to the node.
    be1 = lab.backends[0]

    def ask_full(addr: str) -> str:
        with socket.create_connection((addr, 80), timeout=1) as s:
            s.sendall(b"x")
            return s.recv(100).decode()

    name, seen_src, _port = lab.call(be1, ask_full, vip4(9)).split()
    assert name == "be1" and seen_src == "10.20.0.1"
    assert lab.call(be1, ask_full, vip6(9)).split()[:2] == ["be1", "fd00:20::1"]


def test_udp_conntrack_of_removed_endpoint_is_deleted(lab: Lab, dp: NftablesDataplane) -> None:
    apply(lab, dp, state(frontend(vip4(10), 53, {1: 1}, proto="udp")))
    sock = lab.call(lab.client, socket.socket, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert lab.call(lab.client, udp_ask, vip4(10), 53, sock) == "be1"
        # Weight 0 keeps the flow (draining) ...
        apply(lab, dp, state(frontend(vip4(10), 53, {1: 0, 2: 1}, proto="udp")))
        assert lab.call(lab.client, udp_ask, vip4(10), 53, sock) == "be1"
        # ... removal moves it: same socket, same 5-tuple, new backend.
        apply(lab, dp, state(frontend(vip4(10), 53, {2: 1}, proto="udp")))
        assert lab.call(lab.client, udp_ask, vip4(10), 53, sock) == "be2"
    finally:
        sock.close()


def test_cleanup_removes_the_table(lab: Lab, dp: NftablesDataplane) -> None:
    apply(lab, dp, state(frontend(vip4(11), 80, {1: 1})))
    assert "gatewaylb" in lab.call(lab.node, tables)
    assert R.table_of(frontend(vip4(11), 80, {1: 1}).key) in lab.call(lab.node, tables)
    lab.call(lab.node, dp.cleanup)
    assert not [t for t in lab.call(lab.node, tables) if t.startswith("gatewaylb")]
    assert lab.call(lab.client, tcp_ask, vip4(11), 80, 0.3) == "timeout"


def test_previous_single_table_layout_is_replaced(lab: Lab) -> None:
    """A table left by the single-table layout (skeleton v1) is not adopted; the
    first reconcile replaces it, and any stray gatewaylb-* table, atomically."""

    def old_layout() -> None:
        nft = nftables.Nftables()
        rc, _out, err = nft.cmd(
            "add table inet gatewaylb\n"
            "add chain inet gatewaylb nat_pre { type nat hook prerouting priority -100; }\n"
            "add rule inet gatewaylb nat_pre ip daddr 10.99.0.12 tcp dport 80"
            ' dnat ip to 10.20.0.13:8080 comment "glb skeleton v1"\n'
            "add chain inet gatewaylb fe_4_0a63000c_t_80\n"
            "add table inet gatewaylb-99\n"
        )
        assert rc == 0, err

    lab.call(lab.node, old_layout)
    dp = lab.call(lab.node, NftablesDataplane)
    try:
        assert lab.call(lab.node, dp.programmed) == []
        apply(lab, dp, state(frontend(vip4(12), 80, {1: 1})))
        names = set(lab.call(lab.node, tables))
        assert "gatewaylb-99" not in names and R.table_of((vip4(12), "tcp", 80)) in names
        assert lab.call(lab.client, tcp_many, vip4(12), 80, 5) == Counter(be1=5)
        again = lab.call(lab.node, NftablesDataplane)
        assert (
            lab.call(lab.node, again.reconcile, state(frontend(vip4(12), 80, {1: 1}))).changed == 0
        )
        assert again.transactions == 0
    finally:
        lab.call(lab.node, dp.cleanup)
    assert not [t for t in lab.call(lab.node, tables) if t.startswith("gatewaylb")]


# -- text transactions and netlink reads ------------------------------------------------------


def _ruleset_without_handles() -> list[dict[str, Any]]:
    nft = nftables.Nftables()
    nft.set_json_output(True)
    rc, out, err = nft.cmd("list ruleset")
    assert rc == 0, err
    items: list[dict[str, Any]] = json.loads(out)["nftables"]
    for item in items:
        for obj in item.values():
            if isinstance(obj, dict):
                obj.pop("handle", None)
    return [i for i in items if "metainfo" not in i]


def _comparable(listing: Listing) -> list[tuple[Any, ...]]:
    """A listing without what the kernel may order as it likes (set elements)."""
    out: list[tuple[Any, ...]] = []
    for dump in sorted(listing.tables, key=lambda d: d.table):
        rules: dict[str, list[str]] = {}
        for chain, comment in dump.rules:
            rules.setdefault(chain, []).append(comment)
        out.append((dump.table, sorted(dump.chains), rules, sorted(map(repr, dump.verdicts))))
    return out


def test_the_kernel_holds_what_the_fake_holds(lab: Lab) -> None:
    """(Was: text and JSON transactions leave identical rulesets; the JSON renderer
    is gone.)  The same transactions, written to the kernel as nft text and
    applied to FakeNft, read back as the same objects, so the unit tests that
    drive the dataplane over FakeNft speak for the kernel."""
    a = normalise(frontend(vip4(13), 80, {1: 3, 2: 0, 3: 1}, reject=1))
    b = normalise(frontend(vip6(13), 53, {1: 1, 2: 2}, proto="udp"))
    c = normalise(frontend(vip4(13), 81, {}))
    a2 = normalise(frontend(vip4(13), 80, {1: 1}))
    first = P.change(NftState(), {s.key: s for s in (a, b, c)}).tx
    second = P.frontends(P.Plan((), ((a, a2),), (c,)))
    tables = set(R.layout_tables())

    def apply_text() -> tuple[Listing, list[dict[str, Any]]]:
        kernel = KernelNft()
        for tx in (first, second):
            kernel.apply(tx)
        return kernel.read(tables), _ruleset_without_handles()

    def drop() -> None:
        nft = nftables.Nftables()
        rc, _out, err = nft.cmd("".join(f"delete table inet {t}\n" for t in sorted(tables)))
        assert rc == 0, err

    fake = FakeNft()
    for tx in (first, second):
        fake.apply(tx)
    via_kernel, ruleset = lab.call(lab.node, apply_text)
    lab.call(lab.node, drop)
    via_fake = fake.read(tables)
    assert _comparable(via_kernel) == _comparable(via_fake)
    assert via_kernel.sets == via_fake.sets
    assert len([i for i in ruleset if "rule" in i]) > 20


def test_a_failing_text_transaction_changes_nothing(lab: Lab, dp: NftablesDataplane) -> None:
    apply(lab, dp, state(frontend(vip4(14), 80, {1: 1})))
    before = lab.call(lab.node, _ruleset_without_handles)
    key = (vip4(14), "tcp", 80)
    good = ("flush", Chain(R.table_of(key), R.chain_name(key)))
    bad = ("delete", Chain(R.table_of(key), "fe_no_such_chain"))
    with pytest.raises(Exception, match="No such file"):
        lab.call(lab.node, dp._apply, Transaction([good, bad]))
    assert lab.call(lab.node, _ruleset_without_handles) == before
    assert lab.call(lab.client, tcp_ask, vip4(14), 80) == "be1"


def test_netlink_reads_equal_libnftables_reads(lab: Lab, dp: NftablesDataplane) -> None:
    """Adoption, programmed() and read_counters read the kernel over netlink; the
    libnftables JSON listings (the fallback) must give the same model, broken
    and stray objects included."""
    apply(
        lab,
        dp,
        state(
            frontend(vip4(15), 80, {1: 2, 2: 0}, reject=1),
            frontend(vip4(15), 53, {3: 1}, proto="udp"),
            frontend(vip6(15), 80, {1: 1, 2: 1}),
            frontend(vip6(15), 53, {}, proto="udp"),
        ),
    )
    served = 10 - lab.call(lab.client, tcp_many, vip4(15), 80, 10)["refused"]
    # A chain in the wrong shard with a verdict element there, and an orphan chain.
    stray = (vip4(16), "tcp", 80)
    wrong = R.shard_table((R.shard_of(stray) + 1) % R.SHARDS)
    name = R.chain_name(stray)

    def tamper() -> None:
        nft = nftables.Nftables()
        rc, _out, err = nft.cmd(
            f"add chain inet {wrong} {name}\n"
            f'add rule inet {wrong} {name} accept comment "glb r=0 fp=0"\n'
            f"add element inet {wrong} fe4 {{ {stray[0]} . tcp . 80 : goto {name} }}\n"
            f"add chain inet {R.table_of(stray)} fe_4_0a6300ff_t_80\n"
        )
        assert rc == 0, err

    lab.call(lab.node, tamper)

    def both() -> tuple[ParsedTable, ParsedTable, Counts, Counts]:
        tables = dp._our_tables()
        # the same dataplane's reads through libnftables listings only
        listed = NftablesDataplane(transport=KernelNft(netlink=False))
        return (
            dp._read(tables),
            listed._read(tables),
            dp._read_counter_sets(),
            listed._read_counter_sets(),
        )

    nl, js, cnl, cjs = lab.call(lab.node, both)
    for f in (
        "specs",
        "frontend_counts",
        "backend_counts",
        "masq",
        "tags",
        "broken",
        "chain_tables",
        "elements",
        "stray_elements",
    ):
        assert getattr(nl, f) == getattr(js, f), f
    assert len(nl.specs) == 4 and nl.skeleton_ok
    assert nl.stray_elements == {(wrong, "fe4", stray)}
    assert set(nl.broken) == {name, "fe_4_0a6300ff_t_80"}
    assert (cnl.frontend_counts, cnl.backend_counts) == (cjs.frontend_counts, cjs.backend_counts)
    assert sum(c for c, _b in cnl.backend_counts[(vip4(15), "tcp", 80)].values()) == served
    # The next reconcile of a fresh dataplane repairs both, and nothing else.
    again = lab.call(lab.node, NftablesDataplane)
    result = lab.call(
        lab.node,
        again.reconcile,
        state(
            frontend(vip4(15), 80, {1: 2, 2: 0}, reject=1),
            frontend(vip4(15), 53, {3: 1}, proto="udp"),
            frontend(vip6(15), 80, {1: 1, 2: 1}),
            frontend(vip6(15), 53, {}, proto="udp"),
        ),
    )
    assert result.failures == () and again.transactions == 1
    after = lab.call(lab.node, dp._read, lab.call(lab.node, dp._our_tables))
    assert after.broken == {} and after.stray_elements == set() and after.specs == nl.specs


def test_a_frontend_the_kernel_refuses_does_not_block_the_others(
    lab: Lab, dp: NftablesDataplane, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The text batch fails as a whole; the retry frontend by frontend reports
    the one bad frontend and lands the others."""
    bad_key = (vip4(17), "tcp", 81)
    body = render.chain_body

    def broken_body(spec: FrontendSpec) -> tuple[RuleText, ...]:
        if spec.key == bad_key:  # a jump to a chain that does not exist
            return (("goto fe_no_such_chain", ""),)
        return body(spec)

    monkeypatch.setattr(render, "chain_body", broken_body)
    result = lab.call(
        lab.node,
        dp.reconcile,
        state(frontend(vip4(17), 80, {1: 1}), frontend(vip4(17), 81, {2: 1})),
    )
    # (Was `set(result.errors) == {bad_key}`: Outcome has no `errors` any more;
    # the one failure names the refused frontend.)
    (failure,) = result.failures
    assert f"tcp {bad_key[0]}:{bad_key[2]} not programmed" in failure.message
    assert result.changed == 1
    assert lab.call(lab.client, tcp_ask, vip4(17), 80) == "be1"
    assert [p.port for p in lab.call(lab.node, dp.programmed)] == [80]
