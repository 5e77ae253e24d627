"""A real Kubernetes control plane for tests: etcd + kube-apiserver on loopback.

The binaries are built from the Go module in ``tests/k8s/controlplane`` by
``scripts/build-controlplane.sh`` into ``tests/k8s/bin``. This module only
starts them; it needs nothing beyond the standard library and the ``openssl``
command (for the certificates), plus PyYAML to read the Gateway API CRDs.

What runs:

* etcd, client and peer URLs on ``127.0.0.1:<free port>``, data in the work dir;
* kube-apiserver on ``https://127.0.0.1:<free port>`` with RBAC (and the Node
  authorizer), certificates from a throw-away CA, service-account token signing
  keys, a service CIDR that is only an allocation range (nothing routes to it);
* the Gateway API CRDs (experimental channel, from shared/), applied with
  server-side apply and waited for until Established.

By default there is no kube-controller-manager and no scheduler: nothing
creates EndpointSlices, default service accounts or token secrets, and
nothing garbage-collects; tests create what they need themselves
(``token_for`` creates the namespace and the ServiceAccount and asks the
TokenRequest API). ``controllers=True`` starts both, and
``tests/k8s/cluster.py`` adds a node that runs pods.

Use it as a context manager::

    with ControlPlane() as cp:
        status, body = cp.request("GET", "/api/v1/namespaces")

or from the command line (``make controlplane`` / ``make controlplane-down``)::

    python tests/k8s/controlplane.py up     # starts in the background
    python tests/k8s/controlplane.py status
    python tests/k8s/controlplane.py down
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = REPO / "tests" / "k8s" / "bin"
BUILD_SCRIPT = REPO / "scripts" / "build-controlplane.sh"
OUR_CRDS = REPO / "deploy" / "daemonset" / "crds"
GATEWAY_API_CRDS = Path(
    os.environ.get(
        "GATEWAYLB_GATEWAY_API_CRDS",
        str(REPO.parent / "shared" / "gateway-api" / "crds" / "experimental"),
    )
)
# An allocation range only: the apiserver hands out ClusterIPs from it, but no
# packet is ever sent there (there is no kube-proxy). Picked to overlap none of
# the addresses the lab and the tests use.
SERVICE_CIDR = "10.213.0.0/24"
SA_ISSUER = "https://kubernetes.default.svc.cluster.local"
FIELD_MANAGER = "gatewaylb-tests"
LOOPBACK = "127.0.0.1"
# What kube-controller-manager runs for the one-node cluster: enough for
# Deployments to become pods, pods to become EndpointSlices, namespaces to
# get their ServiceAccount and root CA, deletions to finish, and a node whose
# Lease is renewed (tests/k8s/nodeagent.py) to be untainted and scheduled on.
MANAGERS = ("kube-controller-manager", "kube-scheduler")
CONTROLLERS = (
    "deployment-controller",
    "replicaset-controller",
    "daemonset-controller",
    "endpointslice-controller",
    "serviceaccount-controller",
    "serviceaccount-token-controller",
    "namespace-controller",
    "garbage-collector-controller",
    "root-ca-certificate-publisher-controller",
    "pod-garbage-collector-controller",
    "node-lifecycle-controller",
)
# A node that stops renewing its Lease is NotReady after this (50 s upstream).
NODE_MONITOR_GRACE = "10s"
# What a request on a kept-alive connection the server has closed raises.
STALE_CONNECTION = (
    http.client.RemoteDisconnected,
    http.client.CannotSendRequest,
    BrokenPipeError,
    ConnectionResetError,
)

_PR_SET_PDEATHSIG = 1


class ControlPlaneError(RuntimeError):
    pass


def default_run_dir() -> Path:
    """Where ``up``/``down`` keep their state (fixed, so ``down`` finds it)."""
    env = os.environ.get("GATEWAYLB_CONTROLPLANE_DIR")
    if env:
        return Path(env)
    if os.geteuid() == 0:
        return Path("/run/gatewaylb-controlplane")
    return REPO / ".run" / "controlplane"


def binaries_present(bin_dir: Path = BIN_DIR) -> bool:
    return all(os.access(bin_dir / b, os.X_OK) for b in ("etcd", "kube-apiserver"))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGTERM when the process that started it dies,
    so a killed pytest leaves no etcd or apiserver behind."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


# --- certificates (openssl CLI) ----------------------------------------------


def _openssl(*args: str, cwd: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise ControlPlaneError("the openssl command is needed to make certificates")
    proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise ControlPlaneError(f"openssl {' '.join(args)} failed: {proc.stderr.strip()}")


def _ec_key(pki: Path, name: str) -> None:
    _openssl(
        "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
        "-out", f"{name}.key", cwd=pki,
    )  # fmt: skip
    os.chmod(pki / f"{name}.key", 0o600)


def _signed_cert(pki: Path, name: str, subject: str, extensions: list[str]) -> None:
    _ec_key(pki, name)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", subject, "-out", f"{name}.csr", cwd=pki)
    (pki / f"{name}.ext").write_text("\n".join(extensions) + "\n")
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
        "-set_serial", str(int.from_bytes(os.urandom(8), "big")), "-days", "365",
        "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.crt",
        cwd=pki,
    )  # fmt: skip


def make_pki(pki: Path) -> None:
    """CA, apiserver serving cert, admin client cert (system:masters), SA keys."""
    pki.mkdir(parents=True, exist_ok=True)
    _ec_key(pki, "ca")
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=gatewaylb-test-ca",
        "-days", "365", "-sha256", "-out", "ca.crt",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-addext", "subjectKeyIdentifier=hash",
        cwd=pki,
    )  # fmt: skip
    common = ["subjectKeyIdentifier=hash", "authorityKeyIdentifier=keyid"]
    _signed_cert(
        pki,
        "apiserver",
        "/CN=kube-apiserver",
        [
            *common,
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=serverAuth",
            "subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes,"
            "DNS:kubernetes.default,DNS:kubernetes.default.svc,"
            "DNS:kubernetes.default.svc.cluster.local,IP:10.213.0.1",
        ],
    )
    _signed_cert(
        pki,
        "admin",
        "/O=system:masters/CN=gatewaylb-admin",
        [
            *common,
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=clientAuth",
        ],
    )
    # How the API server authenticates to kubelets (logs); system:masters so
    # that a node agent's check of it is only "signed by the cluster CA".
    _signed_cert(
        pki,
        "apiserver-kubelet-client",
        "/O=system:masters/CN=kube-apiserver-kubelet-client",
        [
            *common,
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature",
            "extendedKeyUsage=clientAuth",
        ],
    )
    _ec_key(pki, "sa")
    _openssl("pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=pki)


# --- the control plane -------------------------------------------------------


class ControlPlane:
    """etcd + kube-apiserver on 127.0.0.1, admin kubeconfig, Gateway API CRDs.

    ``workdir`` holds everything (pki/, etcd data, logs, kubeconfig); a temp dir
    by default, removed by ``stop()``. ``detach=True`` starts the processes in
    their own session so that they outlive this Python process (``up``).
    """

    def __init__(
        self,
        bin_dir: Path = BIN_DIR,
        workdir: Path | None = None,
        crd_dir: Path | None = GATEWAY_API_CRDS,
        own_crds: bool = True,
        detach: bool = False,
        verbosity: int = 1,
        controllers: bool = False,
        node_tunnel: Path | None = None,
    ) -> None:
        self.bin_dir = Path(bin_dir)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="gatewaylb-cp-"))
        self.crd_dir = crd_dir
        self.own_crds = own_crds
        self.detach = detach
        self.verbosity = verbosity
        self.pki = self.workdir / "pki"
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.port = 0
        self._local = threading.local()  # per-thread keep-alive connections
        self._contexts: dict[bool, ssl.SSLContext] = {}
        self._discovery: dict[str, list[dict[str, Any]]] = {}
        self.etcd: subprocess.Popen[bytes] | None = None
        self.apiserver: subprocess.Popen[bytes] | None = None
        # kube-controller-manager and kube-scheduler, when `controllers`.
        self.controllers = controllers
        self.managers: dict[str, subprocess.Popen[bytes]] = {}
        # A Unix socket that speaks HTTP CONNECT into the nodes' network (the
        # test kubelet's tunnel): the API server's `cluster` egress, which it
        # uses to reach kubelets (logs), goes through it.
        self.node_tunnel = node_tunnel
        self.timings: dict[str, float] = {}

    # -- paths and addresses --

    @property
    def server(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    @property
    def etcd_url(self) -> str:
        return f"http://{LOOPBACK}:{self.etcd_port}"

    @property
    def ca_path(self) -> Path:
        return self.pki / "ca.crt"

    @property
    def admin_cert(self) -> Path:
        return self.pki / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.pki / "admin.key"

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    # -- lifecycle --

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> None:
        if not binaries_present(self.bin_dir):
            raise ControlPlaneError(
                f"no etcd/kube-apiserver in {self.bin_dir}; run scripts/build-controlplane.sh"
            )
        t0 = time.monotonic()
        try:
            make_pki(self.pki)
            self.timings["pki"] = time.monotonic() - t0
            self._start_etcd(deadline=time.monotonic() + timeout)
            self.timings["etcd"] = time.monotonic() - t0
            self._start_apiserver(deadline=time.monotonic() + timeout)
            self.timings["apiserver"] = time.monotonic() - t0
            self._write_kubeconfig()
            if self.controllers:
                missing = [b for b in MANAGERS if not os.access(self.bin_dir / b, os.X_OK)]
                if missing:
                    raise ControlPlaneError(
                        f"no {', '.join(missing)} in {self.bin_dir}; "
                        "run scripts/build-controlplane.sh"
                    )
                self._start_managers(deadline=time.monotonic() + timeout)
                self.timings["controllers"] = time.monotonic() - t0
            if self.crd_dir is not None:
                self.install_manifests(self.crd_dir, deadline=time.monotonic() + timeout)
            if self.own_crds:
                # gatewaylb's own CRD (GatewayLBConfig), as the DaemonSet ships it.
                self.install_manifests(OUR_CRDS, deadline=time.monotonic() + timeout)
            self.timings["crds"] = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - the child keeps it
        try:
            return subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                start_new_session=self.detach,
                preexec_fn=None if self.detach else _die_with_parent,
            )
        finally:
            log.close()

    def _log_tail(self, name: str, lines: int = 25) -> str:
        try:
            text = (self.workdir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _start_etcd(self, deadline: float) -> None:
        for attempt in range(3):
            self.etcd_port, self.etcd_peer_port = free_port(), free_port()
            peer = f"http://{LOOPBACK}:{self.etcd_peer_port}"
            self.etcd = self._spawn(
                "etcd",
                [
                    str(self.bin_dir / "etcd"),
                    "--name=gatewaylb-test",
                    f"--data-dir={self.workdir / 'etcd'}",
                    f"--listen-client-urls={self.etcd_url}",
                    f"--advertise-client-urls={self.etcd_url}",
                    f"--listen-peer-urls={peer}",
                    f"--initial-advertise-peer-urls={peer}",
                    f"--initial-cluster=gatewaylb-test={peer}",
                    "--initial-cluster-state=new",
                    # Test data only: skipping fsync makes writes ~10x faster.
                    "--unsafe-no-fsync",
                    "--log-level=warn",
                ],
            )
            while time.monotonic() < deadline:
                if self.etcd.poll() is not None:
                    break
                with contextlib.suppress(OSError, http.client.HTTPException):
                    conn = http.client.HTTPConnection(LOOPBACK, self.etcd_port, timeout=2)
                    conn.request("GET", "/health")
                    resp = conn.getresponse()
                    body = resp.read()
                    conn.close()
                    if resp.status == 200 and b'"true"' in body:
                        return
                time.sleep(0.1)
            else:
                raise ControlPlaneError(f"etcd not healthy in time:\n{self._log_tail('etcd')}")
            # Exited: most likely a port raced away; try new ports.
            if attempt == 2 or "address already in use" not in self._log_tail("etcd"):
                raise ControlPlaneError(f"etcd exited:\n{self._log_tail('etcd')}")

    def restart_apiserver(self, timeout: float = 120.0) -> None:
        """Stop kube-apiserver (SIGTERM, graceful) and start it again on the same
        port against the same etcd, as a control-plane upgrade or crash would;
        returns when /readyz answers again. Clients keep their URL."""
        if self.apiserver is not None:
            if self.apiserver.poll() is None:
                self.apiserver.terminate()
            try:
                self.apiserver.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.apiserver.kill()
                self.apiserver.wait()
            self.apiserver = None
        self._start_apiserver(deadline=time.monotonic() + timeout, port=self.port)

    def _start_apiserver(self, deadline: float, port: int | None = None) -> None:
        for attempt in range(3):
            self.port = port or free_port()
            self.apiserver = self._spawn(
                "kube-apiserver",
                [
                    str(self.bin_dir / "kube-apiserver"),
                    f"--etcd-servers={self.etcd_url}",
                    f"--bind-address={LOOPBACK}",
                    f"--advertise-address={LOOPBACK}",
                    f"--secure-port={self.port}",
                    f"--cert-dir={self.workdir / 'apiserver-certs'}",
                    f"--tls-cert-file={self.pki / 'apiserver.crt'}",
                    f"--tls-private-key-file={self.pki / 'apiserver.key'}",
                    f"--client-ca-file={self.ca_path}",
                    "--authorization-mode=Node,RBAC",
                    f"--service-account-issuer={SA_ISSUER}",
                    f"--service-account-key-file={self.pki / 'sa.pub'}",
                    f"--service-account-signing-key-file={self.pki / 'sa.key'}",
                    f"--service-cluster-ip-range={SERVICE_CIDR}",
                    # The 'kubernetes' Service's endpoints would be 127.0.0.1,
                    # which Endpoints validation rejects; nothing needs them.
                    "--endpoint-reconciler-type=none",
                    "--profiling=false",
                    f"--kubelet-client-certificate={self.pki / 'apiserver-kubelet-client.crt'}",
                    f"--kubelet-client-key={self.pki / 'apiserver-kubelet-client.key'}",
                    f"--kubelet-certificate-authority={self.ca_path}",
                    # As kubeadm sets it: a node's name need not resolve.
                    "--kubelet-preferred-address-types=InternalIP,ExternalIP,Hostname",
                    *self._egress_flags(),
                    f"--v={self.verbosity}",
                ],
            )
            while time.monotonic() < deadline:
                if self.apiserver.poll() is not None:
                    break
                with contextlib.suppress(OSError, http.client.HTTPException):
                    status, _ = self.request("GET", "/readyz", timeout=5)
                    if status == 200:
                        return
                time.sleep(0.2)
            else:
                raise ControlPlaneError(
                    f"kube-apiserver not ready in time:\n{self._log_tail('kube-apiserver')}"
                )
            tail = self._log_tail("kube-apiserver")
            if attempt == 2 or port or "address already in use" not in tail:
                raise ControlPlaneError(f"kube-apiserver exited:\n{tail}")

    def _egress_flags(self) -> list[str]:
        if self.node_tunnel is None:
            return []
        config = self.workdir / "egress-selector.yaml"
        # JSON is YAML; the API server reads either.
        config.write_text(
            json.dumps(
                {
                    "apiVersion": "apiserver.k8s.io/v1beta1",
                    "kind": "EgressSelectorConfiguration",
                    "egressSelections": [
                        {
                            "name": "cluster",
                            "connection": {
                                "proxyProtocol": "HTTPConnect",
                                "transport": {"uds": {"udsName": str(self.node_tunnel)}},
                            },
                        }
                    ],
                }
            )
        )
        return [f"--egress-selector-config-file={config}"]

    def _start_managers(self, deadline: float) -> None:
        """kube-controller-manager (the controllers a one-node cluster needs)
        and kube-scheduler, both with the admin kubeconfig; each healthy on
        its /healthz before this returns."""
        kubeconfig = str(self.kubeconfig)
        common = [
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={LOOPBACK}",
            "--leader-elect=false",
            f"--v={self.verbosity}",
        ]
        ports = {"kube-controller-manager": free_port(), "kube-scheduler": free_port()}
        self.managers["kube-controller-manager"] = self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                *common,
                f"--secure-port={ports['kube-controller-manager']}",
                f"--controllers={','.join(CONTROLLERS)}",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.ca_path}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                f"--node-monitor-grace-period={NODE_MONITOR_GRACE}",
                "--node-monitor-period=1s",
            ],
        )
        self.managers["kube-scheduler"] = self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                *common,
                f"--secure-port={ports['kube-scheduler']}",
            ],
        )
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # their serving certs are self-signed
        for name, port in ports.items():
            proc = self.managers[name]
            while True:
                if proc.poll() is not None:
                    raise ControlPlaneError(f"{name} exited:\n{self._log_tail(name)}")
                if time.monotonic() > deadline:
                    raise ControlPlaneError(f"{name} not healthy in time:\n{self._log_tail(name)}")
                with contextlib.suppress(OSError, http.client.HTTPException):
                    conn = http.client.HTTPSConnection(LOOPBACK, port, timeout=2, context=context)
                    conn.request("GET", "/healthz")
                    if conn.getresponse().status == 200:
                        break
                time.sleep(0.2)

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "gatewaylb-test",
                    "cluster": {"server": self.server, "certificate-authority": str(self.ca_path)},
                }
            ],
            "users": [
                {
                    "name": "admin",
                    "user": {
                        "client-certificate": str(self.admin_cert),
                        "client-key": str(self.admin_key),
                    },
                }
            ],
            "contexts": [
                {
                    "name": "gatewaylb-test",
                    "context": {"cluster": "gatewaylb-test", "user": "admin"},
                }
            ],
            "current-context": "gatewaylb-test",
        }
        # JSON is YAML: any kubeconfig reader takes it.
        self.kubeconfig.write_text(json.dumps(config, indent=2) + "\n")
        os.chmod(self.kubeconfig, 0o600)

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the controllers, the apiserver, then etcd; remove the work dir
        if it was ours."""
        procs = [*self.managers.values(), self.apiserver, self.etcd]
        for proc in procs:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in procs:
            if proc is None:
                continue
            try:
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.apiserver = self.etcd = None
        self.managers = {}
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- HTTP --

    def ssl_context(self, client_cert: bool = True) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_path))
        if client_cert:
            ctx.load_cert_chain(str(self.admin_cert), str(self.admin_key))
        return ctx

    def _connection(self, token: str | None, timeout: float) -> http.client.HTTPSConnection:
        """This thread's keep-alive connection for (port, credentials): a TLS
        handshake per request cost more than the request itself."""
        pool: dict[tuple[int, str | None], http.client.HTTPSConnection]
        pool = self._local.__dict__.setdefault("connections", {})
        key = (self.port, token)
        conn = pool.get(key)
        if conn is None:
            client_cert = token is None
            ctx = self._contexts.get(client_cert)
            if ctx is None:
                ctx = self._contexts[client_cert] = self.ssl_context(client_cert)
            conn = pool[key] = http.client.HTTPSConnection(
                LOOPBACK, self.port, context=ctx, timeout=timeout
            )
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def _drop_connection(self, token: str | None) -> None:
        pool = self._local.__dict__.get("connections", {})
        conn = pool.pop((self.port, token), None)
        if conn is not None:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        token: str | None = None,
        content_type: str = "application/json",
        query: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, Any]:
        """One HTTPS request; as admin (client cert) unless ``token`` is given.
        Returns (status, decoded JSON body or raw text)."""
        headers = {"Accept": "application/json"}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        data = None
        if body is not None:
            data = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        if query:
            path = f"{path}?{urlencode(query)}"
        for attempt in range(2):
            conn = self._connection(token, timeout)
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except STALE_CONNECTION:
                # A kept-alive connection the server closed (idle, or the
                # server restarted): once more on a new one.
                self._drop_connection(token)
                if attempt:
                    raise
            except BaseException:
                self._drop_connection(token)
                raise
        try:
            return resp.status, json.loads(raw) if raw else None
        except ValueError:
            return resp.status, raw.decode(errors="replace")

    def _ok(self, status: int, body: Any, what: str, also: tuple[int, ...] = ()) -> Any:
        if 200 <= status < 300 or status in also:
            return body
        raise ControlPlaneError(f"{what}: HTTP {status}: {body}")

    # -- objects --

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply of one object (idempotent, as ``kubectl apply --server-side``)."""
        path = self.object_path(obj)
        status, body = self.request(
            "PATCH",
            path,
            obj,
            content_type="application/apply-patch+yaml",
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
        )
        result: dict[str, Any] = self._ok(status, body, f"apply {path}")
        return result

    def object_path(self, obj: dict[str, Any]) -> str:
        """REST path of an object, found through discovery (group/version/kind)."""
        api_version, kind = obj["apiVersion"], obj["kind"]
        prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
        resources = self._discovery.get(prefix)
        if resources is None or not any(r["kind"] == kind for r in resources):
            # Not cached, or a kind served since (a CRD installed meanwhile).
            status, body = self.request("GET", prefix)
            self._ok(status, body, f"discovery {prefix}")
            resources = self._discovery[prefix] = body["resources"]
        for res in resources:
            if res["kind"] == kind and "/" not in res["name"]:
                ns = obj["metadata"].get("namespace")
                if res["namespaced"]:
                    prefix += f"/namespaces/{quote(ns or 'default')}"
                return f"{prefix}/{res['name']}/{quote(obj['metadata']['name'])}"
        raise ControlPlaneError(f"{api_version} serves no kind {kind}")

    def install_manifests(self, directory: Path, deadline: float) -> list[str]:
        """Apply every object of every *.yaml in ``directory`` (kustomization.yaml
        excepted), CRDs first, and wait until all CRDs are Established."""
        import yaml  # only here: starting the control plane needs no PyYAML

        objs: list[dict[str, Any]] = []
        for f in sorted(Path(directory).glob("*.yaml")):
            if f.name == "kustomization.yaml":
                continue
            objs.extend(d for d in yaml.safe_load_all(f.read_text()) if d)
        objs.sort(key=lambda o: o["kind"] != "CustomResourceDefinition")
        crds = []
        for obj in objs:
            self.apply(obj)
            if obj["kind"] == "CustomResourceDefinition":
                crds.append(obj["metadata"]["name"])
        for name in crds:
            self.wait_crd_established(name, deadline)
        return crds

    def wait_crd_established(self, name: str, deadline: float) -> None:
        path = f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}"
        while True:
            status, body = self.request("GET", path)
            # A just-created CRD may carry `conditions: null` for a moment.
            st = (body or {}).get("status") or {} if status == 200 else {}
            conds = st.get("conditions") or []
            if any(c["type"] == "Established" and c["status"] == "True" for c in conds):
                return
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"CRD {name} not Established: {conds}")
            time.sleep(0.1)

    def ensure_namespace(self, namespace: str) -> None:
        status, body = self.request(
            "POST",
            "/api/v1/namespaces",
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        )
        self._ok(status, body, f"create namespace {namespace}", also=(409,))

    def token_for(
        self,
        namespace: str,
        serviceaccount: str,
        expiration_seconds: int = 3600,
        audiences: list[str] | None = None,
    ) -> str:
        """Create the namespace and ServiceAccount if needed and return a bound
        token for it from the TokenRequest API."""
        self.ensure_namespace(namespace)
        status, body = self.request(
            "POST",
            f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts",
            {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": serviceaccount}},
        )
        self._ok(status, body, f"create serviceaccount {namespace}/{serviceaccount}", also=(409,))
        spec: dict[str, Any] = {"expirationSeconds": expiration_seconds}
        if audiences:
            spec["audiences"] = audiences
        status, body = self.request(
            "POST",
            f"/api/v1/namespaces/{quote(namespace)}/serviceaccounts/{quote(serviceaccount)}/token",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec},
        )
        token: str = self._ok(status, body, "TokenRequest")["status"]["token"]
        return token

    def kubeconfig_for_token(self, token: str, path: Path) -> Path:
        """Write a kubeconfig that authenticates with ``token`` (for clients
        under test that take a kubeconfig)."""
        config = json.loads(self.kubeconfig.read_text())
        config["users"] = [{"name": "admin", "user": {"token": token}}]
        path.write_text(json.dumps(config, indent=2) + "\n")
        os.chmod(path, 0o600)
        return path

    # -- state for the CLI --

    def state(self) -> dict[str, Any]:
        assert self.etcd is not None and self.apiserver is not None
        return {
            "workdir": str(self.workdir),
            "server": self.server,
            "kubeconfig": str(self.kubeconfig),
            "ca": str(self.ca_path),
            "etcd": self.etcd_url,
            "pids": {
                "kube-apiserver": self.apiserver.pid,
                "etcd": self.etcd.pid,
            },
            "binaries": {
                "kube-apiserver": str(self.bin_dir / "kube-apiserver"),
                "etcd": str(self.bin_dir / "etcd"),
            },
        }


@contextlib.contextmanager
def running(**kwargs: Any) -> Iterator[ControlPlane]:
    with ControlPlane(**kwargs) as cp:
        yield cp


# --- CLI -----------------------------------------------------------------------


def _pid_runs(pid: int, binary: str) -> bool:
    """True when ``pid`` is alive and runs ``binary`` (not a recycled pid)."""
    try:
        exe = os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return False
    return os.path.realpath(exe) == os.path.realpath(binary)


def _read_state(run_dir: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads((run_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    return state


def _alive(state: dict[str, Any]) -> bool:
    return all(_pid_runs(pid, state["binaries"][name]) for name, pid in state["pids"].items())


def cmd_up(run_dir: Path) -> int:
    state = _read_state(run_dir)
    if state is not None and _alive(state):
        print(f"already running: {state['server']}")
        print(f"KUBECONFIG={state['kubeconfig']}")
        return 0
    if state is not None:
        cmd_down(run_dir, quiet=True)
    if not binaries_present():
        print("building the control plane binaries first ...", file=sys.stderr)
        subprocess.run([str(BUILD_SCRIPT)], check=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True, mode=0o700)
    cp = ControlPlane(workdir=run_dir, detach=True)
    t0 = time.monotonic()
    try:
        cp.start()
    except ControlPlaneError as e:
        print(f"controlplane: {e}", file=sys.stderr)
        return 1
    (run_dir / "state.json").write_text(json.dumps(cp.state(), indent=2) + "\n")
    print(f"control plane up in {time.monotonic() - t0:.1f} s: {cp.server} (etcd {cp.etcd_url})")
    print(f"logs: {run_dir}/kube-apiserver.log, {run_dir}/etcd.log; stop: make controlplane-down")
    print(f"KUBECONFIG={cp.kubeconfig}")
    return 0


def cmd_down(run_dir: Path, quiet: bool = False) -> int:
    state = _read_state(run_dir)
    if state is None:
        if not quiet:
            print(f"no control plane state in {run_dir}; nothing to stop")
        shutil.rmtree(run_dir, ignore_errors=True)
        return 0
    for name in ("kube-apiserver", "etcd"):
        pid, binary = state["pids"][name], state["binaries"][name]
        if not _pid_runs(pid, binary):
            continue
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while _pid_runs(pid, binary) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_runs(pid, binary):
            os.kill(pid, signal.SIGKILL)
        if not quiet:
            print(f"stopped {name} (pid {pid})")
    shutil.rmtree(run_dir, ignore_errors=True)
    return 0


def cmd_status(run_dir: Path) -> int:
    state = _read_state(run_dir)
    if state is None or not _alive(state):
        print("not running")
        return 1
    print(f"running: {state['server']}")
    print(f"KUBECONFIG={state['kubeconfig']}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--run-dir", type=Path, default=None, help="state and data directory")
    args = parser.parse_args(argv)
    run_dir = args.run_dir or default_run_dir()
    if args.command == "up":
        return cmd_up(run_dir)
    if args.command == "down":
        return cmd_down(run_dir)
    return cmd_status(run_dir)


if __name__ == "__main__":
    sys.exit(main())
