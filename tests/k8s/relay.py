"""A TCP relay from a lab namespace's loopback to the host's loopback.

(The one-node cluster also listens on the `kubernetes` Service's ClusterIP in
the node, so that pods reach the API server where a kube-proxy would send
them.)

The test API server listens on the host's 127.0.0.1; an agent under test runs
in a lab node namespace, whose loopback is its own.  The relay's listening
socket is created inside the node namespace (by a thread switched into it) and
every accepted connection is spliced to the API server from the host
namespace.  Bytes only: TLS is end to end, so the agent verifies the API
server's certificate for 127.0.0.1 as it would anywhere.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from agent.lab import Host, Lab


class LoopbackRelay:
    def __init__(
        self,
        lab: Lab,
        host_port: Callable[[], int],
        listen: tuple[str, int] = ("127.0.0.1", 0),
        where: Host | None = None,
    ) -> None:
        """Listens on `listen` in the namespace of `where` (the lab's node
        unless given)."""
        # A callable: an API server restarted on another port is followed.
        self._host_port = host_port
        self._listener: socket.socket = lab.call(where or lab.node, self._listen, listen)
        self.port = int(self._listener.getsockname()[1])
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True, name="relay")
        self._thread.start()

    @staticmethod
    def _listen(address: tuple[str, int]) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(64)
        return sock

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                inner, _ = self._listener.accept()
            except OSError:
                return
            try:
                outer = socket.create_connection(("127.0.0.1", self._host_port()), timeout=5)
            except OSError:
                inner.close()
                continue
            outer.settimeout(None)
            # A relay must not hold a small segment back for an ACK (Nagle):
            # with the peer's delayed ACKs, that costs up to 40 ms a request.
            for s in (inner, outer):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for a, b in ((inner, outer), (outer, inner)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
