"""Readiness, liveness and startup probes, as the kubelet runs them.

httpGet and tcpSocket connect from the node's network namespace to the pod's
address (the node's, for hostNetwork pods); exec runs the command inside the
container's mount and network namespaces.  Each probe keeps its own
consecutive success and failure counts against its thresholds.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Makes a socket in the node's network namespace (a socket keeps the
# namespace it was created in, whichever thread then uses it).
SocketFactory = Callable[[], socket.socket]


@dataclass(frozen=True, slots=True)
class ProbeSpec:
    handler: str  # httpGet | tcpSocket | exec
    action: Mapping[str, Any]
    initial_delay: float
    period: float
    timeout: float
    success_threshold: int
    failure_threshold: int

    @classmethod
    def parse(cls, probe: Mapping[str, Any]) -> ProbeSpec:
        handlers = [k for k in ("httpGet", "tcpSocket", "exec", "grpc") if k in probe]
        if len(handlers) != 1:
            raise ValueError("a probe needs exactly one of httpGet, tcpSocket, exec")
        if handlers[0] == "grpc":
            raise ValueError("grpc probes are not supported by this node")
        return cls(
            handler=handlers[0],
            action=probe[handlers[0]],
            initial_delay=float(probe.get("initialDelaySeconds", 0)),
            period=float(probe.get("periodSeconds", 10)),
            timeout=float(probe.get("timeoutSeconds", 1)),
            success_threshold=int(probe.get("successThreshold", 1)),
            failure_threshold=int(probe.get("failureThreshold", 3)),
        )


class ProbeState:
    """One probe of one container run."""

    def __init__(self, spec: ProbeSpec, started: float, initial: bool) -> None:
        self.spec = spec
        self.next_at = started + spec.initial_delay
        self.result = initial  # readiness starts False, liveness and startup pass until probed
        self.successes = 0
        self.failures = 0
        self.last_message = ""

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def record(self, ok: bool, message: str, now: float) -> None:
        self.next_at = now + self.spec.period
        self.last_message = message
        if ok:
            self.successes += 1
            self.failures = 0
            if self.successes >= self.spec.success_threshold:
                self.result = True
        else:
            self.failures += 1
            self.successes = 0
            if self.failures >= self.spec.failure_threshold:
                self.result = False


def port_of(port: int | str, ports: Sequence[Mapping[str, Any]]) -> int:
    if isinstance(port, int):
        return port
    if port.isdigit():
        return int(port)
    for p in ports:
        if p.get("name") == port:
            return int(p["containerPort"])
    raise ValueError(f"no container port named {port!r}")


def run_probe(
    spec: ProbeSpec,
    pod_ip: str,
    ports: Sequence[Mapping[str, Any]],
    pid: int,
    node_socket: SocketFactory,
) -> tuple[bool, str]:
    """(success, message) of one probe attempt."""
    try:
        if spec.handler == "exec":
            return _exec(spec, pid)
        host = spec.action.get("host") or pod_ip
        port = port_of(spec.action["port"], ports)
        sock = node_socket()
        sock.settimeout(spec.timeout)
        try:
            sock.connect((host, port))
            if spec.handler == "tcpSocket":
                return True, ""
            return _http(spec, sock, host, port)
        finally:
            sock.close()
    except (OSError, ValueError, ssl.SSLError) as e:
        return False, f"{spec.handler} probe failed: {e}"


def _http(spec: ProbeSpec, sock: socket.socket, host: str, port: int) -> tuple[bool, str]:
    action = spec.action
    if action.get("scheme", "HTTP").upper() == "HTTPS":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # the kubelet does not verify probe targets
        sock = context.wrap_socket(sock, server_hostname=host)
    headers = {"Host": f"{host}:{port}", "User-Agent": "kube-probe/1.34", "Accept": "*/*"}
    for h in action.get("httpHeaders") or []:
        headers[h["name"]] = h["value"]
    headers["Connection"] = "close"
    request = f"GET {action.get('path', '/')} HTTP/1.1\r\n"
    request += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(request.encode())
    status_line = b""
    deadline = time.monotonic() + spec.timeout
    while b"\r\n" not in status_line and time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            break
        status_line += chunk
    parts = status_line.split(b"\r\n", 1)[0].split()
    if len(parts) < 2 or not parts[1].isdigit():
        return False, f"HTTP probe failed: no status line from {host}:{port}"
    code = int(parts[1])
    if 200 <= code < 400:
        return True, ""
    return False, f"HTTP probe failed with statuscode: {code}"


def _exec(spec: ProbeSpec, pid: int) -> tuple[bool, str]:
    argv = ["nsenter", f"--target={pid}", "--mount", "--net", "--", *spec.action["command"]]
    try:
        done = subprocess.run(argv, capture_output=True, timeout=spec.timeout, check=False)
    except subprocess.TimeoutExpired:
        return False, f"command timed out after {spec.timeout:g}s"
    if done.returncode == 0:
        return True, ""
    out = (done.stdout + done.stderr).decode(errors="replace").strip()[:256]
    return False, f"command exited {done.returncode}: {out}"
