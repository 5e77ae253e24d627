"""A tiny TCP and UDP echo backend for the lab: `python -m agent.lab.echo`.

Answers every TCP read and every UDP datagram with `<name> <peer ip> <peer port>`
so a test sees which backend served it and which source address the backend saw
(to check masquerade).  Threaded; IPv4 and IPv6; stops on SIGTERM or SIGINT.
`ask_tcp` and `ask_udp` are the matching clients.  Owns only its own sockets.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys
import threading
from types import FrameType


def ask_tcp(addr: str, port: int, timeout: float = 1.0) -> str:
    """The name the echo backend behind addr:port answers with, or
    `error:<exception>` (refused, timed out, unreachable)."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect((addr, port))
            s.sendall(b"hi\n")
            return s.recv(200).decode().split()[0]
    except OSError as exc:
        return f"error:{type(exc).__name__}"


def ask_udp(addr: str, port: int, timeout: float = 1.0) -> str:
    """`ask_tcp` over one datagram: the name that answered, or `error:<exception>`."""
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.connect((addr, port))
            s.send(b"hi")
            return s.recv(200).decode().split()[0]
    except OSError as exc:
        return f"error:{type(exc).__name__}"


def _reply(name: str, peer: tuple[str, int] | tuple[str, int, int, int]) -> bytes:
    host = peer[0].removeprefix("::ffff:")
    return f"{name} {host} {peer[1]}\n".encode()


def _serve_conn(conn: socket.socket, name: str, peer: tuple[str, int]) -> None:
    with conn:
        try:
            while data := conn.recv(65536):
                del data
                conn.sendall(_reply(name, peer))
        except OSError:
            pass


def _tcp_loop(sock: socket.socket, name: str) -> None:
    while True:
        try:
            conn, peer = sock.accept()
        except OSError:
            return
        threading.Thread(target=_serve_conn, args=(conn, name, peer), daemon=True).start()


def _udp_loop(sock: socket.socket, name: str) -> None:
    while True:
        try:
            _data, peer = sock.recvfrom(65536)
            sock.sendto(_reply(name, peer), peer)
        except OSError:
            return


def _bind(family: socket.AddressFamily, kind: socket.SocketKind, port: int) -> socket.socket:
    sock = socket.socket(family, kind)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::", port))
    else:
        sock.bind(("0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        sock.listen(1024)
    return sock


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tcp", type=int, default=0, help="TCP port (0: none)")
    parser.add_argument("--udp", type=int, default=0, help="UDP port (0: none)")
    parser.add_argument("--name", default=socket.gethostname())
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    socks: list[socket.socket] = []
    for family in (socket.AF_INET, socket.AF_INET6):
        if args.tcp:
            s = _bind(family, socket.SOCK_STREAM, args.tcp)
            socks.append(s)
            threading.Thread(target=_tcp_loop, args=(s, args.name), daemon=True).start()
        if args.udp:
            s = _bind(family, socket.SOCK_DGRAM, args.udp)
            socks.append(s)
            threading.Thread(target=_udp_loop, args=(s, args.name), daemon=True).start()
    print("ready", flush=True)
    stop.wait()
    for s in socks:
        s.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
