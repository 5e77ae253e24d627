"""The maps' byte layouts: ctypes mirrors of bpf/gatewaylb.h, and the encoding
of Python values into them.

Owns everything the agent and the C programs must agree on byte for byte: the
structs, the map names and their pins (`MAPS`), the flag and id values and the
packet mark bits (passed to the compiler as -D defines by the loader).  A
change here changes bpf/gatewaylb.h in the same commit; the loader compares
the compiled sizes with these at every start.  Pure: never touches the kernel,
never decides what goes into a map.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import socket
from typing import Any, Final

from agent.state import TCP, UDP, FrontendKey

Key = FrontendKey

# skb->mark bits the programs set and the table of nft_table.py acts on.
MARK_REJECT: Final = 0x10000000
MARK_MASQ: Final = 0x20000000
MARK_NOTRACK: Final = 0x40000000

PROTO_NUM: Final = {TCP: socket.IPPROTO_TCP, UDP: socket.IPPROTO_UDP}
PROTO_NAME: Final = {v: k for k, v in PROTO_NUM.items()}
FE_REJECT_ALL: Final = 1  # GLB_FE_REJECT_ALL
REJECT_ID: Final = 0  # GLB_BACKEND_REJECT: a Maglev slot that refuses the new flow


class FrontendKeyC(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_ubyte * 16),
        ("port", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
    ]


class FrontendC(ctypes.Structure):
    _fields_ = [
        ("id", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("table_off", ctypes.c_uint32),
        ("table_size", ctypes.c_uint32),
        ("reject_weight", ctypes.c_uint32),
        ("generation", ctypes.c_uint32),
    ]


class BackendC(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_ubyte * 16),
        ("port", ctypes.c_uint16),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("weight", ctypes.c_uint32),
        ("frontend_id", ctypes.c_uint32),
    ]


class FlowKeyC(ctypes.Structure):
    _fields_ = [
        ("src", ctypes.c_ubyte * 16),
        ("dst", ctypes.c_ubyte * 16),
        ("sport", ctypes.c_uint16),
        ("dport", ctypes.c_uint16),
        ("proto", ctypes.c_uint8),
        ("family", ctypes.c_uint8),
        ("pad", ctypes.c_uint16),
    ]


class FlowC(ctypes.Structure):
    _fields_ = [
        ("addr", ctypes.c_ubyte * 16),
        ("port", ctypes.c_uint16),
        ("flags", ctypes.c_uint8),
        ("pad", ctypes.c_uint8),
        ("backend_id", ctypes.c_uint32),
        ("frontend_id", ctypes.c_uint32),
    ]


class RevC(ctypes.Structure):
    _fields_ = [("addr", ctypes.c_ubyte * 16), ("port", ctypes.c_uint16), ("pad", ctypes.c_uint16)]


class SockKeyC(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("addr", ctypes.c_uint32),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
    ]


class SockKey6C(ctypes.Structure):
    _fields_ = [
        ("cookie", ctypes.c_uint64),
        ("addr", ctypes.c_uint32 * 4),
        ("port", ctypes.c_uint16),
        ("pad", ctypes.c_uint16),
        ("pad2", ctypes.c_uint32),
    ]


class CounterC(ctypes.Structure):
    _fields_ = [
        ("packets", ctypes.c_uint64),
        ("bytes", ctypes.c_uint64),
        ("flows", ctypes.c_uint64),
    ]


# map name in C -> (pin file, key type, value type); per-CPU: those named *_stats
MAPS: Final[dict[str, tuple[str, type[ctypes.Structure] | type[ctypes.c_uint32], Any]]] = {
    "glb_frontends": ("frontends", FrontendKeyC, FrontendC),
    "glb_backends": ("backends", ctypes.c_uint32, BackendC),
    "glb_maglev": ("maglev", ctypes.c_uint32, ctypes.c_uint32),
    "glb_flows": ("flows", FlowKeyC, FlowC),
    "glb_rev": ("rev", FlowKeyC, RevC),
    "glb_sock_rev": ("sock_rev", SockKeyC, RevC),
    "glb_sock_rev6": ("sock_rev6", SockKey6C, RevC),
    "glb_fe_stats": ("fe_stats", ctypes.c_uint32, CounterC),
    "glb_be_stats": ("be_stats", ctypes.c_uint32, CounterC),
}


def is_percpu(cname: str) -> bool:
    return cname.endswith("_stats")


# -- encoding -------------------------------------------------------------------------


@functools.lru_cache(maxsize=65536)
def pack_addr(ip: str) -> tuple[int, bytes]:
    """(family, 16 bytes): IPv4 in the first four, the rest zero (gatewaylb.h)."""
    addr = ipaddress.ip_address(ip)
    if addr.version == 4:
        return 4, addr.packed + bytes(12)
    return 6, addr.packed


def unpack_addr(family: int, raw: Any) -> str:
    data = bytes(raw)
    if family == 4:
        # What ipaddress prints, at a third of the cost: adoption and status
        # decode every backend.  (IPv6 stays with ipaddress: inet_ntop prints
        # IPv4-mapped addresses otherwise, and keys must match canonical_ip.)
        return socket.inet_ntop(socket.AF_INET, data[:4])
    return str(ipaddress.IPv6Address(data))


def frontend_key(key: Key) -> FrontendKeyC:
    vip, proto, port = key
    family, packed = pack_addr(vip)
    k = FrontendKeyC()
    ctypes.memmove(k.addr, packed, 16)
    k.port = socket.htons(port)
    k.proto = PROTO_NUM[proto]
    k.family = family
    return k


def key_of(k: FrontendKeyC) -> Key:
    return (
        unpack_addr(k.family, k.addr),
        PROTO_NAME.get(k.proto, str(k.proto)),
        socket.ntohs(k.port),
    )


def backend_value(ip: str, port: int, weight: int, frontend_id: int) -> BackendC:
    family, packed = pack_addr(ip)
    bv = BackendC()
    ctypes.memmove(bv.addr, packed, 16)
    bv.port = socket.htons(port)
    bv.family = family
    bv.weight = weight
    bv.frontend_id = frontend_id
    return bv


def backend_of(bv: BackendC) -> tuple[str, int]:
    """(ip, port) of a backend value."""
    return unpack_addr(bv.family, bv.addr), socket.ntohs(bv.port)
