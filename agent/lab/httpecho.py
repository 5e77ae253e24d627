"""HTTP, HTTPS and gRPC echo backends for the lab: `python -m agent.lab.httpecho`.

Every answer is JSON describing the request as the backend saw it:

    {"name": "be1", "method": "GET", "path": "/a/b", "query": "x=1",
     "host": "foo.example.com", "headers": {"x-foo": ["1"]}, "sni": null,
     "protocol": "HTTP/1.1"}

so a test can check routing (name), rewrites (path, host), header filters and
weights.  `?delay=<ms>` delays the answer (timeouts); `?status=<code>` picks
the status.  The HTTPS port also reports the SNI it was reached with (TLS
passthrough).  The gRPC port answers any unary method `/<service>/<method>`
with the same kind of JSON (method, metadata), through grpcio's generic
handler -- no generated stubs.

`python -m agent.lab.httpecho grpc-call TARGET METHOD [--authority A]` is a
one-shot gRPC client (a process, so that grpcio's threads live in the network
namespace it is started in).  Threaded servers, IPv4 and IPv6, stop on
SIGTERM/SIGINT; they own only their own sockets.
"""

from __future__ import annotations

import argparse
import json
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import FrameType
from typing import Any
from urllib.parse import parse_qs, urlsplit


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 1024
    name = ""

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A proxy closing an idle keep-alive connection is not an error here.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        params = parse_qs(parts.query)
        if "delay" in params:
            time.sleep(int(params["delay"][0]) / 1000)
        status = int(params.get("status", ["200"])[0])
        headers: dict[str, list[str]] = {}
        for key, value in self.headers.items():
            headers.setdefault(key.lower(), []).append(value)
        doc = {
            "name": self.server.name,
            "method": self.command,
            "path": parts.path,
            "query": parts.query,
            "host": self.headers.get("host"),
            "headers": headers,
            "sni": getattr(self.connection, "sni", None),
            "client": _client_cn(self.connection),
            "protocol": self.request_version,
            "body": len(body),
        }
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("x-backend", self.server.name)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _answer


def _client_cn(conn: Any) -> str | None:
    """The common name of the client certificate a TLS connection verified."""
    if not isinstance(conn, ssl.SSLSocket):
        return None
    cert: dict[str, Any] = conn.getpeercert() or {}
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return None


def serve_http(name: str, port: int, tls: ssl.SSLContext | None = None) -> _Server:
    server = _Server6(("::", port), _Handler)
    server.name = name
    if tls is not None:

        def on_sni(sock: Any, sni: str | None, _ctx: ssl.SSLContext) -> None:
            sock.sni = sni

        tls.sni_callback = on_sni
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def serve_grpc(name: str, port: int) -> Any:
    import grpc

    def handle(method: str, request: bytes, context: Any) -> bytes:
        meta: dict[str, list[str]] = {}
        for key, value in context.invocation_metadata():
            meta.setdefault(key, []).append(value if isinstance(value, str) else repr(value))
        doc = {"name": name, "method": method, "metadata": meta, "size": len(request)}
        return json.dumps(doc).encode()

    class Generic(grpc.GenericRpcHandler):  # type: ignore[misc]
        def service(self, details: Any) -> Any:
            method = str(details.method)
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: handle(method, request, context)
            )

    from concurrent.futures import ThreadPoolExecutor

    server = grpc.server(ThreadPoolExecutor(max_workers=8), handlers=[Generic()])
    server.add_insecure_port(f"[::]:{port}")
    server.start()
    return server


def grpc_call(target: str, method: str, authority: str | None, timeout: float) -> int:
    import grpc

    options = [("grpc.default_authority", authority)] if authority else []
    with grpc.insecure_channel(target, options=options) as channel:
        call = channel.unary_unary(method)
        try:
            reply = call(b"hello", timeout=timeout)
        except grpc.RpcError as exc:
            print(json.dumps({"error": exc.code().name, "details": exc.details()}))
            return 0
        print(reply.decode())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "grpc-call":
        p = argparse.ArgumentParser(prog="httpecho grpc-call")
        p.add_argument("target")
        p.add_argument("method")
        p.add_argument("--authority")
        p.add_argument("--timeout", type=float, default=5.0)
        a = p.parse_args(args[1:])
        return grpc_call(a.target, a.method, a.authority, a.timeout)
    p = argparse.ArgumentParser(prog="httpecho")
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, default=8080)
    p.add_argument("--tls-port", type=int)
    p.add_argument("--cert", help="PEM certificate chain + key for --tls-port")
    p.add_argument("--mtls-port", type=int, help="TLS that requires a client certificate")
    p.add_argument("--client-ca", help="PEM CAs of the client certificates --mtls-port takes")
    p.add_argument("--grpc-port", type=int)
    a = p.parse_args(args)
    # Servers are kept referenced: a collected grpc server stops serving.
    servers: list[Any] = [serve_http(a.name, a.port)]
    if a.tls_port:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert)
        servers.append(serve_http(a.name, a.tls_port, ctx))
    if a.mtls_port:
        mtls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        mtls.load_cert_chain(a.cert)
        mtls.load_verify_locations(a.client_ca)
        mtls.verify_mode = ssl.CERT_REQUIRED
        servers.append(serve_http(a.name, a.mtls_port, mtls))
    if a.grpc_port:
        servers.append(serve_grpc(a.name, a.grpc_port))
    stop = threading.Event()

    def on_signal(_sig: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print("ready", flush=True)
    stop.wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
