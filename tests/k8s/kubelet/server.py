"""The node's side of `kubectl logs`: the kubelet API on the node's port
10250, and the tunnel the API server reaches it through.

The API server runs in the host's network namespace and the node is a lab
namespace, so the API server is given an egress selector (its `cluster`
egress, the one it uses for kubelets) that sends every such connection
through an HTTP CONNECT proxy on a Unix socket: the way konnectivity
connects API servers to nodes they cannot route to.  The proxy opens the
connection from inside the node's namespace.  The kubelet API itself is TLS
with a serving certificate for the node's address, signed by the cluster CA,
and requires a client certificate from the same CA (the API server's
kubelet-client certificate).
"""

from __future__ import annotations

import contextlib
import http.server
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, urlsplit

from .container import rfc3339


class LogSource(Protocol):
    def log_file(self, container: str, previous: bool) -> Path | None: ...
    def running_log(self, container: str) -> bool: ...


FindPod = Callable[[str, str], LogSource | None]


def _lines(path: Path, timestamps: bool, since: float | None) -> list[bytes]:
    out = []
    with contextlib.suppress(OSError), path.open("rb") as f:
        for record in f:
            out.append(_format(record, timestamps, since))
    return [line for line in out if line]


def _format(record: bytes, timestamps: bool, since: float | None) -> bytes:
    # CRI log line: "<time> <stream> <P|F> <text>"
    parts = record.split(b" ", 3)
    if len(parts) < 4:
        return b""
    stamp, text = parts[0], parts[3]
    if since is not None and stamp.decode() < rfc3339(since, nanos=True):
        return b""
    return stamp + b" " + text if timestamps else text


class KubeletAPI(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listener: socket.socket, context: ssl.SSLContext, find: FindPod) -> None:
        super().__init__(listener.getsockname()[:2], _Handler, bind_and_activate=False)
        self.socket.close()
        self.socket = context.wrap_socket(listener, server_side=True)
        self.find = find


class _Handler(http.server.BaseHTTPRequestHandler):
    server: KubeletAPI
    protocol_version = "HTTP/1.0"  # a followed log ends when the connection does

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        parts = [p for p in url.path.split("/") if p]
        if parts == ["healthz"]:
            return self._reply(200, b"ok")
        if len(parts) != 4 or parts[0] != "containerLogs":
            return self._reply(404, b"not found: this node serves /containerLogs and /healthz")
        _, namespace, name, container = parts
        pod = self.server.find(namespace, name)
        if pod is None:
            return self._reply(404, f'pod "{namespace}/{name}" not found on this node'.encode())
        previous = query.get("previous") == "true"
        path = pod.log_file(container, previous)
        if path is None:
            what = "previous terminated container" if previous else "container"
            return self._reply(400, f'{what} "{container}" in pod "{name}" not found'.encode())
        timestamps = query.get("timestamps") == "true"
        since = time.time() - float(query["sinceSeconds"]) if "sinceSeconds" in query else None
        lines = _lines(path, timestamps, since)
        if "tailLines" in query:
            tail = int(query["tailLines"])
            lines = lines[-tail:] if tail > 0 else []
        limit = int(query["limitBytes"]) if "limitBytes" in query else None
        body = b"".join(lines)
        if limit is not None:
            body = body[:limit]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(body)
        if query.get("follow") == "true" and limit is None:
            self._follow(pod, container, path, timestamps)

    def _follow(self, pod: LogSource, container: str, path: Path, timestamps: bool) -> None:
        with contextlib.suppress(OSError), path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            while True:
                record = f.readline()
                if record:
                    self.wfile.write(_format(record, timestamps, None))
                    self.wfile.flush()
                    continue
                if not pod.running_log(container) or pod.log_file(container, False) != path:
                    return
                time.sleep(0.1)

    def _reply(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class ConnectProxy:
    """HTTP CONNECT on a Unix socket; each tunnel is dialled from a socket
    made by `node_socket` (in the node's namespace)."""

    def __init__(self, path: Path, node_socket: Callable[[], socket.socket]) -> None:
        self.path = path
        self.node_socket = node_socket
        path.unlink(missing_ok=True)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        os.chmod(path, 0o600)
        self._listener.listen(64)
        self._thread = threading.Thread(target=self._accept, name="egress-proxy", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._tunnel, args=(conn,), daemon=True).start()

    def _tunnel(self, conn: socket.socket) -> None:
        head = b""
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in head and len(head) < 8192:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                head += chunk
        line = head.split(b"\r\n", 1)[0].split()
        if len(line) < 2 or line[0] != b"CONNECT":
            conn.sendall(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            conn.close()
            return
        host, _, port = line[1].decode().rpartition(":")
        upstream = self.node_socket()
        upstream.settimeout(5)
        try:
            upstream.connect((host.strip("[]"), int(port)))
        except (OSError, ValueError) as e:
            with contextlib.suppress(OSError):
                conn.sendall(f"HTTP/1.1 502 Bad Gateway\r\n\r\n{e}".encode())
            conn.close()
            upstream.close()
            return
        upstream.settimeout(None)
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        rest = head.split(b"\r\n\r\n", 1)[1]
        if rest:
            upstream.sendall(rest)
        for a, b in ((conn, upstream), (upstream, conn)):
            threading.Thread(target=_pipe, args=(a, b), daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.path.unlink(missing_ok=True)


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    for s in (src, dst):
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
