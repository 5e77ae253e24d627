"""L2 announcement without a kernel: owner choice, heartbeat frames, ARP and NDP
packets (checked against an independent reading of the RFC layouts), and the
engine's membership and takeover logic driven by a fake clock and fake ports."""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.announce.l2 import engine as l2
from agent.announce.l2.frames import (
    ArpRequest,
    Heartbeat,
    Solicitation,
    arp_reply,
    decode_heartbeat,
    encode_heartbeat,
    gratuitous_arp,
    heartbeat_frame,
    parse_arp_request,
    parse_neighbor_solicitation,
    solicited_na,
    solicited_node_group,
    unsolicited_na,
)
from agent.announce.l2.membership import Membership, owned_by, owner_of
from agent.announce.l2.ports import OnLinkRoute, covering_interfaces, strict_arp

MAC_A = bytes.fromhex("02000000000a")
MAC_CLIENT = bytes.fromhex("0200000000cc")
NODES = ("node-a", "node-b", "node-c")


def vips(n: int) -> list[str]:
    half = n // 2
    v4 = [str(ipaddress.IPv4Address("10.0.0.0") + i) for i in range(half)]
    v6 = [str(ipaddress.IPv6Address("fd00::") + i) for i in range(n - half)]
    return v4 + v6


# -- independent references -------------------------------------------------------------


def ones_complement_ok(data: bytes) -> bool:
    """A correct Internet checksum makes the 16-bit one's complement sum of the
    covered data (checksum included) 0xFFFF, i.e. 0 modulo 0xFFFF."""
    if len(data) % 2:
        data += b"\0"
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return sum(words) % 0xFFFF == 0


def pseudo_header(src: bytes, dst: bytes, length: int) -> bytes:
    return src + dst + length.to_bytes(4, "big") + b"\0\0\0\x3a"


def ns_frame(target: str, source: str = "fd00::2", hops: int = 255, corrupt: bool = False) -> bytes:
    src = ipaddress.IPv6Address(source).packed
    group = bytes.fromhex("ff0200000000000000000001ff") + ipaddress.IPv6Address(target).packed[13:]
    msg = bytearray(bytes([135, 0, 0, 0, 0, 0, 0, 0]) + ipaddress.IPv6Address(target).packed)
    if source != "::":
        msg += bytes([1, 1]) + MAC_CLIENT
    total = sum(
        int.from_bytes((pseudo_header(src, group, len(msg)) + msg)[i : i + 2], "big")
        for i in range(0, 40 + len(msg), 2)
    )
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    msg[2:4] = ((~total & 0xFFFF) ^ (1 if corrupt else 0)).to_bytes(2, "big")
    ip6 = struct.pack("!IHBB", 6 << 28, len(msg), 58, hops) + src + group
    eth = b"\x33\x33" + group[-4:] + MAC_CLIENT + b"\x86\xdd"
    return eth + ip6 + bytes(msg)


def arp_request_frame(sender: str, target: str) -> bytes:
    eth = b"\xff" * 6 + MAC_CLIENT + b"\x08\x06"
    arp = (
        bytes.fromhex("0001 0800 06 04 0001")
        + MAC_CLIENT
        + ipaddress.IPv4Address(sender).packed
        + bytes(6)
        + ipaddress.IPv4Address(target).packed
    )
    return eth + arp


# -- owner choice -----------------------------------------------------------------------


def test_owner_is_deterministic_and_independent_of_member_order() -> None:
    for vip in vips(50):
        owners = {owner_of(vip, order) for order in (NODES, NODES[::-1], NODES[1:] + NODES[:1])}
        assert len(owners) == 1
    assert owner_of("10.0.0.1", ()) is None


def test_owners_spread_evenly_over_three_nodes() -> None:
    all_vips = vips(3000)
    counts = Counter(owner_of(v, NODES) for v in all_vips)
    assert set(counts) == set(NODES)
    for node, count in counts.items():
        assert 900 <= count <= 1100, (node, counts)
    # owned_by partitions the VIPs
    shares = [owned_by(n, all_vips, NODES) for n in NODES]
    assert sum(len(s) for s in shares) == 3000
    assert frozenset().union(*shares) == frozenset(all_vips)


def test_removing_a_node_moves_only_its_vips() -> None:
    all_vips = vips(3000)
    before = {v: owner_of(v, NODES) for v in all_vips}
    after = {v: owner_of(v, ("node-a", "node-c")) for v in all_vips}
    moved = {v for v in all_vips if before[v] != after[v]}
    assert moved == {v for v in all_vips if before[v] == "node-b"}
    # and adding it back moves exactly those back
    assert {v: owner_of(v, NODES) for v in all_vips} == before


# -- heartbeats --------------------------------------------------------------------------


def test_heartbeat_round_trip_with_flags_and_padding() -> None:
    for hb in (
        Heartbeat("node-a", 1),
        Heartbeat("nöde-ß.example", 2**64 - 1, ready=False),
        Heartbeat("n", 7, ready=True, leaving=True),
    ):
        payload = encode_heartbeat(hb)
        assert payload[:4] == b"gLB2"
        assert decode_heartbeat(payload) == hb
        assert decode_heartbeat(payload + bytes(40)) == hb  # Ethernet padding
    frame = heartbeat_frame(MAC_A, Heartbeat("node-a", 5))
    assert frame[:6] == b"\xff" * 6 and frame[6:12] == MAC_A
    assert frame[12:14] == b"\x88\xb5"
    assert len(frame) >= 60
    assert decode_heartbeat(frame[14:]) == Heartbeat("node-a", 5)


def test_heartbeat_rejects_garbage_and_short_frames() -> None:
    good = encode_heartbeat(Heartbeat("node-a", 9))
    bad = [
        b"",
        good[:10],
        good[:-1],  # name cut short
        b"XXXX" + good[4:],  # magic
        good[:4] + b"\x02" + good[5:],  # a future version
        good[:6] + b"\x00\x00" + good[8:],  # empty name
        good[:6] + b"\x01\x00" + good[8:] + bytes(300),  # name longer than allowed
        good[:16] + b"\xff\xfe\xfd\xfc\xfb\xfa",  # not UTF-8
        bytes(64),
    ]
    for payload in bad:
        assert decode_heartbeat(payload) is None, payload
    with pytest.raises(ValueError):
        encode_heartbeat(Heartbeat("", 1))
    with pytest.raises(ValueError):
        encode_heartbeat(Heartbeat("x" * 254, 1))


def test_membership_expiry_leaving_and_readiness() -> None:
    m = Membership("node-a")
    m.heard(Heartbeat("node-a", 1), 0.0)  # own frames are ignored
    m.heard(Heartbeat("node-b", 1), 0.0)
    m.heard(Heartbeat("node-c", 1, ready=False), 0.0)
    assert m.live() == ("node-a", "node-b", "node-c")
    assert m.ready_peers() == {"node-b"}
    assert m.expire(1.0, dead_after=1.0) == ()  # exactly dead_after: still live
    m.heard(Heartbeat("node-b", 2), 0.9)
    assert m.expire(1.5, dead_after=1.0) == ("node-c",)
    m.heard(Heartbeat("node-b", 3, leaving=True), 1.6)
    assert m.live() == ("node-a",)


# -- ARP -----------------------------------------------------------------------------------


def test_arp_reply_bytes() -> None:
    frame = arp_request_frame("10.0.0.2", "10.0.0.100")
    req = parse_arp_request(frame)
    assert req == ArpRequest(MAC_CLIENT, "10.0.0.2", "10.0.0.100")
    reply = arp_reply(MAC_A, req)
    assert len(reply) == 60 and reply[42:] == bytes(18)
    expected = (
        MAC_CLIENT
        + MAC_A
        + b"\x08\x06"
        + bytes.fromhex("0001 0800 06 04 0002")
        + MAC_A
        + bytes([10, 0, 0, 100])
        + MAC_CLIENT
        + bytes([10, 0, 0, 2])
    )
    assert reply[:42] == expected
    assert parse_arp_request(reply) is None  # a reply is not a request
    assert parse_arp_request(frame[:30]) is None


def test_gratuitous_arp_has_sender_equal_target() -> None:
    request, reply = gratuitous_arp(MAC_A, "10.0.0.100")
    for frame, op in ((request, 1), (reply, 2)):
        assert frame[:6] == b"\xff" * 6 and frame[6:12] == MAC_A
        assert struct.unpack_from("!H", frame, 20)[0] == op
        assert frame[22:28] == MAC_A
        assert frame[28:32] == frame[38:42] == bytes([10, 0, 0, 100])


# -- NDP -----------------------------------------------------------------------------------


def test_solicited_node_group() -> None:
    assert solicited_node_group("fd00::100") == "ff02::1:ff00:100"
    assert solicited_node_group("2001:db8::abcd:ef12:3456") == "ff02::1:ff12:3456"


def test_parse_neighbor_solicitation() -> None:
    sol = parse_neighbor_solicitation(ns_frame("fd00::100"))
    assert sol == Solicitation(MAC_CLIENT, "fd00::2", "fd00::100")
    assert parse_neighbor_solicitation(ns_frame("fd00::100", hops=64)) is None
    assert parse_neighbor_solicitation(ns_frame("fd00::100", corrupt=True)) is None
    assert parse_neighbor_solicitation(ns_frame("fd00::100")[:70]) is None
    dad = parse_neighbor_solicitation(ns_frame("fd00::100", source="::"))
    assert dad == Solicitation(MAC_CLIENT, "::", "fd00::100")


def check_na(frame: bytes, dst_mac: bytes, dst_ip: str, solicited: bool) -> None:
    vip = ipaddress.IPv6Address("fd00::100").packed
    assert frame[:6] == dst_mac and frame[6:12] == MAC_A and frame[12:14] == b"\x86\xdd"
    vtf, length, next_header, hops = struct.unpack_from("!IHBB", frame, 14)
    assert (vtf >> 28, length, next_header, hops) == (6, 32, 58, 255)
    src, dst = frame[22:38], frame[38:54]
    assert src == vip and dst == ipaddress.IPv6Address(dst_ip).packed
    msg = frame[54 : 54 + length]
    assert msg[0] == 136 and msg[1] == 0
    flags = int.from_bytes(msg[4:8], "big")
    assert flags == (0x60000000 if solicited else 0x20000000)  # S+O or O
    assert msg[8:24] == vip
    assert msg[24:26] == b"\x02\x01" and msg[26:32] == MAC_A  # target link-layer option
    assert ones_complement_ok(pseudo_header(src, dst, length) + msg)
    assert msg[2:4] != b"\0\0"


def test_solicited_neighbor_advertisement_bytes() -> None:
    sol = Solicitation(MAC_CLIENT, "fd00::2", "fd00::100")
    check_na(solicited_na(MAC_A, sol), MAC_CLIENT, "fd00::2", solicited=True)


def test_dad_and_unsolicited_advertisements_go_to_all_nodes() -> None:
    all_nodes_mac = bytes.fromhex("333300000001")
    dad = Solicitation(MAC_CLIENT, "::", "fd00::100")
    check_na(solicited_na(MAC_A, dad), all_nodes_mac, "ff02::1", solicited=False)
    check_na(unsolicited_na(MAC_A, "fd00::100"), all_nodes_mac, "ff02::1", solicited=False)


# -- interfaces and sysctls ------------------------------------------------------------


def test_covering_interfaces() -> None:
    routes = [
        OnLinkRoute(ipaddress.ip_network("10.0.0.0/24"), "eth0"),
        OnLinkRoute(ipaddress.ip_network("fd00:1::/64"), "eth1"),
        OnLinkRoute(ipaddress.ip_network("192.168.0.0/16"), "eth2"),
    ]
    assert covering_interfaces(["10.0.0.100", "fd00:1::5"], routes) == ("eth0", "eth1")
    assert covering_interfaces(["172.16.0.1"], routes) == ()


def test_strict_arp_raises_only_what_is_too_loose(tmp_path: Path) -> None:
    for name, ignore, announce in (("eth0", "0", "0"), ("eth1", "2", "2"), ("eth2", "3", "1")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "arp_ignore").write_text(ignore + "\n")
        (tmp_path / name / "arp_announce").write_text(announce + "\n")
        strict_arp(name, root=tmp_path)
    values = {
        name: (
            (tmp_path / name / "arp_ignore").read_text().strip(),
            (tmp_path / name / "arp_announce").read_text().strip(),
        )
        for name in ("eth0", "eth1", "eth2")
    }
    assert values == {"eth0": ("1", "2"), "eth1": ("2", "2"), "eth2": ("1", "2")}
    strict_arp("missing0", root=tmp_path)  # no IPv4 conf: nothing to do


# -- the engine, with fake ports and a fake clock ------------------------------------


class FakePort:
    def __init__(self, name: str) -> None:
        self.name = name
        self.mac = MAC_A
        self.sent: list[tuple[int, bytes]] = []
        self._pairs = [socket.socketpair() for _ in range(3)]
        self.socks = {
            l2.ETH_P_HEARTBEAT: self._pairs[0][0],
            l2.ETH_P_ARP: self._pairs[1][0],
            l2.ETH_P_IPV6: self._pairs[2][0],
        }
        self.groups: frozenset[str] = frozenset()

    def send(self, ethertype: int, frame: bytes) -> None:
        self.sent.append((ethertype, frame))

    def set_groups(self, groups: frozenset[str]) -> None:
        self.groups = groups

    def close(self) -> None:
        for a, b in self._pairs:
            a.close()
            b.close()

    def heartbeats(self) -> list[Heartbeat]:
        out = [decode_heartbeat(f[14:]) for t, f in self.sent if t == l2.ETH_P_HEARTBEAT]
        return [h for h in out if h is not None]

    def announced(self) -> list[str]:
        """VIPs of gratuitous ARPs (requests) and unsolicited NAs sent."""
        out = []
        for t, f in self.sent:
            if t == l2.ETH_P_ARP and f[21] == 1:
                out.append(str(ipaddress.IPv4Address(f[28:32])))
            elif t == l2.ETH_P_IPV6 and f[:6] == bytes.fromhex("333300000001"):
                out.append(str(ipaddress.IPv6Address(f[62:78])))
        return out


@pytest.fixture
def engine(monkeypatch: pytest.MonkeyPatch) -> Iterator[l2._Engine]:
    ports: dict[str, FakePort] = {}

    def open_port(name: str) -> FakePort:
        if name == "missing0":
            raise OSError(19, "No such device")
        ports[name] = FakePort(name)
        return ports[name]

    monkeypatch.setattr(l2._Port, "open", staticmethod(open_port))
    eng = l2._Engine("node-a")
    yield eng
    eng.close(1e6)


def run(eng: l2._Engine, start: float, end: float, step: float = 0.05) -> None:
    t = start
    while t <= end + 1e-9:
        eng.tick(t)
        t += step


def peer_beat(eng: l2._Engine, name: str, now: float, ready: bool = True) -> None:
    port = next(iter(eng.ports.values()))
    frame = heartbeat_frame(MAC_CLIENT, Heartbeat(name, 1, ready=ready))
    eng._on_heartbeat(port, frame, now)  # type: ignore[arg-type]


VIPS = frozenset({"10.0.0.100", "10.0.0.101", "fd00::100", "fd00::101", "fd00::102"})


def test_engine_listens_before_claiming_then_owns_all_alone(engine: l2._Engine) -> None:
    engine.reconfigure(l2._Config(("eth0", "missing0"), VIPS, 0.2, 1.0), 0.0)
    assert set(engine.ports) == {"eth0"}  # the missing one is only logged
    port: FakePort = engine.ports["eth0"]  # type: ignore[assignment]
    assert port.groups == {"ff02::1:ff00:100", "ff02::1:ff00:101", "ff02::1:ff00:102"}
    run(engine, 0.0, 0.9)
    assert engine.owned == frozenset()
    assert port.heartbeats() and not any(h.ready for h in port.heartbeats())
    run(engine, 1.0, 1.0)
    assert engine.owned == VIPS
    assert port.heartbeats()[-1].ready  # announced at once, not a tick later
    # gratuitous ARP / unsolicited NA three times over a second
    run(engine, 1.05, 2.1)
    assert Counter(port.announced()) == {v: 3 for v in VIPS}
    assert engine.changes == len(VIPS)


def test_engine_shares_with_a_peer_and_takes_over_when_it_dies(engine: l2._Engine) -> None:
    engine.reconfigure(l2._Config(("eth0",), VIPS, 0.2, 1.0), 0.0)
    port: FakePort = engine.ports["eth0"]  # type: ignore[assignment]
    t = 0.0
    while t < 2.0:  # node-b is alive and ready all along
        peer_beat(engine, "node-b", t)
        run(engine, t, t + 0.15)
        t += 0.2
    mine = owned_by("node-a", VIPS, ("node-a", "node-b"))
    assert engine.owned == mine and 0 < len(mine) < len(VIPS)
    assert engine.live == ("node-a", "node-b")
    # ARP is answered for owned IPv4 VIPs only
    for vip in ("10.0.0.100", "10.0.0.101"):
        port.sent.clear()
        engine._on_arp(port, arp_request_frame("10.0.0.2", vip), t)  # type: ignore[arg-type]
        assert bool(port.sent) == (vip in mine)
    port.sent.clear()
    last = t - 0.2  # node-b's last heartbeat
    run(engine, t, last + 1.0)  # silent for exactly dead_after: still live
    assert engine.owned == mine
    run(engine, last + 1.05, last + 1.1)
    assert engine.owned == VIPS and engine.live == ("node-a",)
    assert set(port.announced()) == VIPS - mine  # only the taken-over VIPs


def test_engine_leaves_out_a_peer_that_is_not_ready(engine: l2._Engine) -> None:
    engine.reconfigure(l2._Config(("eth0",), VIPS, 0.2, 1.0), 0.0)
    for i in range(15):
        peer_beat(engine, "node-b", i * 0.1, ready=False)
        engine.tick(i * 0.1)
    assert engine.owned == VIPS  # node-b still warming up: nothing is handed to it
    assert engine.live == ("node-a", "node-b")
    peer_beat(engine, "node-b", 1.5)
    engine.tick(1.5)
    assert engine.owned == owned_by("node-a", VIPS, ("node-a", "node-b"))
    port = engine.ports["eth0"]
    engine._on_heartbeat(
        port, heartbeat_frame(MAC_CLIENT, Heartbeat("node-b", 2, leaving=True)), 1.7
    )
    engine.tick(1.7)
    assert engine.owned == VIPS  # a leaving peer's VIPs are taken at once


def test_engine_announces_its_vips_again_after_a_stall(engine: l2._Engine) -> None:
    """Peers declared us dead while this thread stood still and announced our
    VIPs; they hand them back silently, so we must announce them again."""
    engine.reconfigure(l2._Config(("eth0",), VIPS, 0.2, 1.0), 0.0)
    port: FakePort = engine.ports["eth0"]  # type: ignore[assignment]
    run(engine, 0.0, 3.0)
    assert engine.owned == VIPS
    port.sent.clear()
    run(engine, 5.0, 5.0)  # two seconds without a tick
    assert set(port.announced()) == VIPS
    assert engine.changes == len(VIPS)  # nothing changed hands from our side


def test_engine_warns_once_about_another_node_with_its_name(
    engine: l2._Engine, caplog: pytest.LogCaptureFixture
) -> None:
    engine.reconfigure(l2._Config(("eth0",), VIPS, 0.2, 1.0), 0.0)
    port = engine.ports["eth0"]
    own = heartbeat_frame(MAC_A, Heartbeat("node-a", 1))  # looped back from our port
    other = heartbeat_frame(MAC_CLIENT, Heartbeat("node-a", 1))
    for frame in (own, other, other):
        engine._on_heartbeat(port, frame, 0.1)
    assert [r.message for r in caplog.records if "duplicate" in r.message] == [
        "event=l2_duplicate_node_name node=node-a mac=02:00:00:00:00:cc"
    ]
    assert engine.live == ("node-a",)
