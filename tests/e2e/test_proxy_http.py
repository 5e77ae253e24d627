"""The L7 proxy worker (HAProxy) with real clients and backends, in a lab.

One lab for the module: client -- node -- 3 backends.  Each backend runs
`agent.lab.httpecho` (HTTP on 8080, HTTPS on 8443, gRPC/h2c on 9090) and answers
with JSON naming itself and describing the request it received.  The worker
runs HAProxy in the node namespace, bound to VIPs that `VIPAddresses` puts on
the node's `lo`; clients run in threads parked in the client namespace (gRPC
clients as processes there).  Each test applies its own listeners (a reload)
and checks what the clients see.  Figures are printed (`pytest -s`).
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from agent.dataplane.nft.dataplane import NftablesDataplane
from agent.filters import (
    CORSPolicy,
    HeaderModifier,
    PathModifier,
    RequestRedirect,
    RouteFilter,
    Timeouts,
    URLRewrite,
)
from agent.lab import Lab, vip4, vip6
from agent.lab.netns import setns_current_thread
from agent.proxy.addresses import VIPAddresses
from agent.proxy.http_frontend import H2C
from agent.proxy.worker import ProxyWorker
from agent.refs import ObjectRef
from agent.state import (
    Backend,
    BackendSet,
    BackendTLS,
    ClientValidation,
    DesiredState,
    FrontendSource,
    HTTPMatch,
    HTTPRouteEntry,
    L4Frontend,
    L7Listener,
    MatchRule,
    ServiceBackend,
    TLSCertificate,
    TLSRouteEntry,
    VirtualHost,
)

pytestmark = pytest.mark.root

VIP = vip4(5)
TLS_T = ObjectRef("TLSRoute", "default", "t")
VIP6 = vip6(5)
HTTP_PORT, TLS_PORT, GRPC_PORT, MTLS_PORT = 8080, 8443, 9090, 9443
BE = {1: "10.20.0.11", 2: "10.20.0.12", 3: "10.20.0.13"}


# -- building listeners ---------------------------------------------------------------------


def svc(
    i: int, weight: int = 1, port: int = HTTP_PORT, h2c: bool = False, **kw: Any
) -> ServiceBackend:
    return ServiceBackend(
        f"default/be{i}:{port}", weight, (Backend(BE[i], port, 1),), H2C if h2c else None, **kw
    )


def to(*services: ServiceBackend, invalid: int = 0) -> BackendSet:
    return BackendSet(tuple(services), invalid)


def entry(
    route: str,
    backends: BackendSet,
    path: str = "/",
    kind: str = "PathPrefix",
    *,
    rule: int = 0,
    headers: tuple[MatchRule, ...] = (),
    query: tuple[MatchRule, ...] = (),
    method: str | None = None,
    filters: tuple[RouteFilter, ...] = (),
    timeouts: Timeouts | None = None,
    grpc: bool = False,
) -> HTTPRouteEntry:
    return HTTPRouteEntry(
        ObjectRef("HTTPRoute", "default", route),
        rule,
        HTTPMatch(kind, path, headers, query, method),
        filters,
        backends,
        timeouts,
        grpc,
    )


def listener(
    hosts: dict[str, list[HTTPRouteEntry]],
    *,
    name: str = "http",
    port: int = 80,
    protocol: str = "HTTP",
    hostname: str | None = None,
    vips: tuple[str, ...] = (VIP,),
    certificates: tuple[TLSCertificate, ...] = (),
) -> L7Listener:
    return L7Listener(
        "default/gw",
        name,
        vips,
        port,
        protocol,
        "Terminate" if protocol == "HTTPS" else None,
        hostname,
        certificates,
        tuple(VirtualHost(h, tuple(es)) for h, es in hosts.items()),
    )


def headers_filter(kind: str, **kw: Any) -> RouteFilter:
    mod = HeaderModifier(
        set=tuple(kw.get("set", ())),
        add=tuple(kw.get("add", ())),
        remove=tuple(kw.get("remove", ())),
    )
    if kind == "request":
        return RouteFilter("RequestHeaderModifier", request_header_modifier=mod)
    return RouteFilter("ResponseHeaderModifier", response_header_modifier=mod)


def redirect(
    scheme: str | None = None,
    hostname: str | None = None,
    path: PathModifier | None = None,
    port: int | None = None,
    code: int = 302,
) -> RouteFilter:
    return RouteFilter(
        "RequestRedirect", request_redirect=RequestRedirect(scheme, hostname, path, port, code)
    )


def rewrite(hostname: str | None = None, path: PathModifier | None = None) -> RouteFilter:
    return RouteFilter("URLRewrite", url_rewrite=URLRewrite(hostname, path))


# -- clients (run in the client namespace) ---------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def doc(self) -> dict[str, Any]:
        return json.loads(self.body) if self.body.startswith(b"{") else {}

    @property
    def name(self) -> str:
        return str(self.doc.get("name", self.status))


def request(
    path: str,
    host: str = "example.com",
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    addr: str = VIP,
    port: int = 80,
    sni: str | None = None,
    tls: bool = False,
    client_cert: str | None = None,
) -> Reply:
    conn = _connect(addr, port, sni if sni is not None else host, tls, client_cert)
    try:
        conn.request(method, path, headers={"Host": host, **(headers or {})})
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def _connect(
    addr: str, port: int, sni: str, tls: bool, client_cert: str | None = None
) -> http.client.HTTPConnection:
    """`client_cert`: a PEM file with a certificate and its key to present."""
    conn = http.client.HTTPConnection(addr, port, timeout=5)
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        if client_cert is not None:
            ctx.load_cert_chain(client_cert)
        raw = socket.create_connection((addr, port), timeout=5)
        conn.sock = ctx.wrap_socket(raw, server_hostname=sni)
    return conn


def many(n: int, path: str, host: str = "example.com") -> Counter[str]:
    """n keep-alive requests on one connection; counts of backend name/status."""
    out: Counter[str] = Counter()
    conn = http.client.HTTPConnection(VIP, 80, timeout=5)
    for _ in range(n):
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read()
        out[json.loads(body)["name"] if resp.status == 200 else str(resp.status)] += 1
    conn.close()
    return out


def tls_peer(addr: str, port: int, sni: str | None) -> tuple[str, bytes]:
    """(certificate subject CN, first bytes of an HTTP answer) over TLS."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((addr, port), timeout=5) as raw,
        ctx.wrap_socket(raw, server_hostname=sni) as s,
    ):
        der = s.getpeercert(binary_form=True)
        assert der is not None
        cn = _cn_of(der)
        s.sendall(f"GET /tls HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        return cn, data


def _cn_of(der: bytes) -> str:
    pem = ssl.DER_cert_to_PEM_cert(der)
    out = subprocess.run(
        ["openssl", "x509", "-noout", "-subject", "-nameopt", "multiline"],
        input=pem,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for line in out.splitlines():
        if "commonName" in line:
            return line.split("=", 1)[1].strip()
    return ""


def body_of(data: bytes) -> dict[str, Any]:
    _, _, body = data.partition(b"\r\n\r\n")
    return json.loads(body)


# -- fixtures --------------------------------------------------------------------------------


def make_cert(directory: Path, cn: str) -> TLSCertificate:
    key, crt = directory / f"{cn}.key", directory / f"{cn}.crt"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ),
            *("-nodes", "-days", "2", "-subj", f"/CN={cn}", "-addext", f"subjectAltName=DNS:{cn}"),
            *("-keyout", str(key), "-out", str(crt)),
        ],
        check=True,
        capture_output=True,
    )
    return TLSCertificate(f"default/{cn}", crt.read_bytes(), key.read_bytes())


@dataclass
class Env:
    lab: Lab
    worker: ProxyWorker
    certs: dict[str, TLSCertificate]
    tmp: Path
    backend_ca: bytes  # the backends' self-signed certificate (backend.internal)
    client_cert: TLSCertificate  # one the backends' MTLS_PORT accepts (gateway.client)

    def apply(self, *listeners: L7Listener) -> None:
        result = self.worker.apply(listeners)
        assert result.ok, result
        assert result.problems == (), result.problems

    def call(self, fn: Any, *args: Any, **kw: Any) -> Any:
        return self.lab.call(self.lab.client, fn, *args, **kw)

    def get(self, path: str, host: str = "example.com", **kw: Any) -> Reply:
        return self.lab.call(self.lab.client, request, path, host, **kw)

    def grpc(self, method: str, authority: str, target: str = f"{VIP}:80") -> dict[str, Any]:
        argv = [sys.executable, "-m", "agent.lab.httpecho", "grpc-call", target, method]
        proc = self.lab.popen(
            self.lab.client, [*argv, "--authority", authority], stdout=subprocess.PIPE
        )
        out, _ = proc.communicate(timeout=30)
        return dict(json.loads(out))


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    with Lab(backends=3) as lab, tempfile.TemporaryDirectory(prefix="glbp-") as tmp:
        tmpdir = Path(tmp)
        certs = {cn: make_cert(tmpdir, cn) for cn in ("a.example.com", "b.example.com")}
        backend_cert = make_cert(tmpdir, "backend.internal")
        pem = tmpdir / "backend.pem"
        pem.write_bytes(backend_cert.cert_pem + backend_cert.key_pem)
        client_cert = make_cert(tmpdir, "gateway.client")
        client_ca = tmpdir / "client-ca.pem"
        client_ca.write_bytes(client_cert.cert_pem)
        for be in lab.backends:
            argv = [sys.executable, "-m", "agent.lab.httpecho", "--name", be.role]
            argv += ["--port", str(HTTP_PORT), "--tls-port", str(TLS_PORT), "--cert", str(pem)]
            argv += ["--mtls-port", str(MTLS_PORT), "--client-ca", str(client_ca)]
            argv += ["--grpc-port", str(GRPC_PORT)]
            proc = lab.popen(be, argv, stdout=subprocess.PIPE)
            assert proc.stdout is not None
            assert b"ready" in proc.stdout.readline()
        addresses = VIPAddresses(netns=lab.node.ns)
        addresses.reconcile([VIP, VIP6])
        worker = ProxyWorker(tmpdir / "run", netns=lab.node.ns)
        try:
            yield Env(lab, worker, certs, tmpdir, backend_cert.cert_pem, client_cert)
        finally:
            worker.stop(remove_files=True)
            addresses.cleanup()


# -- matching --------------------------------------------------------------------------------


def test_path_matches_and_404(env: Env) -> None:
    env.apply(
        listener(
            {
                "*": [
                    entry("exact", to(svc(1)), "/exact", "Exact"),
                    entry("regex", to(svc(3)), "/re/[0-9]+", "RegularExpression"),
                    entry("prefix", to(svc(2)), "/prefix", "PathPrefix"),
                    entry("slash", to(svc(3)), "/slash/", "PathPrefix"),
                ]
            }
        )
    )
    expect = {
        "/exact": "be1",
        "/exact/": "404",
        "/exactly": "404",
        "/prefix": "be2",
        "/prefix/": "be2",
        "/prefix/deeper?q=1": "be2",
        "/prefixx": "404",
        "/re/123": "be3",
        "/re/123/x": "404",
        "/re/abc": "404",
        "/slash": "be3",
        "/slash/x": "be3",
        "/other": "404",
    }
    got = {path: env.get(path).name for path in expect}
    assert got == expect


def test_header_query_method_matches_and_precedence(env: Env) -> None:
    exact = MatchRule("Exact", "X-Version", "two")
    rx = MatchRule("RegularExpression", "x-version", "thr[e]+")
    env.apply(
        listener(
            {
                "*": [
                    # in precedence order, as translate sorts them
                    entry("m", to(svc(3)), "/api", method="POST"),
                    entry("h", to(svc(2)), "/api", headers=(exact,)),
                    entry("hr", to(svc(3)), "/api", headers=(rx,)),
                    entry("q", to(svc(1)), "/api", query=(MatchRule("Exact", "animal", "whale"),)),
                    entry("base", to(svc(1)), "/"),
                ]
            }
        )
    )
    assert env.get("/api", method="POST").name == "be3"
    assert env.get("/api", headers={"x-version": "two"}).name == "be2"
    assert env.get("/api", headers={"X-VERSION": "two"}).name == "be2"
    assert env.get("/api", headers={"x-version": "Two"}).name == "be1"  # values are exact
    assert env.get("/api", headers={"x-version": "threee"}).name == "be3"
    assert env.get("/api", headers={"x-version": "xthree"}).name == "be1"  # full match
    assert env.get("/api?animal=whale").name == "be1"
    r = env.get("/api?animal=whale", headers={"x-version": "two"})
    assert r.name == "be2"  # the header rule comes first
    assert env.get("/api?animal=dolphin").doc["path"] == "/api"


def test_hostnames_listeners_and_virtual_hosts(env: Env) -> None:
    env.apply(
        listener(
            {
                "foo.example.com": [entry("exact", to(svc(1)))],
                "*.example.com": [entry("wild", to(svc(2)))],
                "*": [entry("any", to(svc(3)), "/only")],
            }
        ),
        listener(
            {"bar.example.org": [entry("org", to(svc(3)))]},
            name="org",
            hostname="*.example.org",
        ),
    )
    assert env.get("/", "foo.example.com").name == "be1"
    assert env.get("/", "FOO.example.com:80").name == "be1"
    assert env.get("/", "x.y.example.com").name == "be2"
    assert env.get("/", "example.com").name == "404"
    assert env.get("/only", "other.test").name == "be3"
    assert env.get("/", "bar.example.org").name == "be3"
    # The *.example.org listener owns this host; it has no route for it.
    assert env.get("/only", "baz.example.org").name == "404"


# -- filters ---------------------------------------------------------------------------------


def test_header_modifiers_request_response_and_backend(env: Env) -> None:
    weird = "a%[src] $HOME #c 'q' \"d\" \\e"
    req = headers_filter(
        "request",
        set=[("x-set", "set-value"), ("x-weird", weird)],
        add=[("x-add", "added")],
        remove=["x-remove"],
    )
    resp = headers_filter("response", set=[("x-resp", "r1")], add=[("x-resp-add", "r2")])
    backend_filter = headers_filter("request", set=[("x-backend-filter", "be2-only")])
    env.apply(
        listener(
            {
                "*": [
                    entry("filters", to(svc(1)), "/f", filters=(req, resp)),
                    entry("bfilter", to(svc(2, filters=(backend_filter,))), "/b"),
                ]
            }
        )
    )
    r = env.get("/f", headers={"x-set": "old", "x-add": "orig", "x-remove": "gone"})
    seen = r.doc["headers"]
    assert seen["x-set"] == ["set-value"]
    assert seen["x-weird"] == [weird]
    assert sorted(seen["x-add"]) == ["added", "orig"]
    assert "x-remove" not in seen
    assert r.headers["x-resp"] == "r1" and r.headers["x-resp-add"] == "r2"
    r = env.get("/b")
    assert r.name == "be2" and r.doc["headers"]["x-backend-filter"] == ["be2-only"]
    assert "x-resp" not in r.headers


def test_redirects(env: Env) -> None:
    full = PathModifier("ReplaceFullPath", "/new/full")
    prefix = PathModifier("ReplacePrefixMatch", "/v2")
    env.apply(
        listener(
            {
                "*": [
                    entry("scheme", to(), "/scheme", filters=(redirect(scheme="https"),)),
                    entry(
                        "host",
                        to(),
                        "/host",
                        filters=(redirect(hostname="other.example.com", code=301),),
                    ),
                    entry("port", to(), "/port", filters=(redirect(port=8443, code=303),)),
                    entry("full", to(), "/full", filters=(redirect(path=full, code=307),)),
                    entry("prefix", to(), "/v1", filters=(redirect(path=prefix, code=308),)),
                    entry(
                        "both",
                        to(),
                        "/both",
                        filters=(redirect(scheme="https", port=443, hostname="x.example.com"),),
                    ),
                ]
            }
        )
    )
    cases = {
        "/scheme/a?x=1": (302, "https://example.com/scheme/a?x=1"),
        "/host": (301, "http://other.example.com/host"),
        "/port/p": (303, "http://example.com:8443/port/p"),
        "/full/x?y=2": (307, "http://example.com/new/full?y=2"),
        "/v1/items/7": (308, "http://example.com/v2/items/7"),
        "/v1": (308, "http://example.com/v2"),
        "/both": (302, "https://x.example.com/both"),
    }
    for path, (code, location) in cases.items():
        r = env.get(path)
        assert (r.status, r.headers.get("location")) == (code, location), path


def test_url_rewrites(env: Env) -> None:
    def prefix(old: str, new: str) -> HTTPRouteEntry:
        mod = PathModifier("ReplacePrefixMatch", new)
        return entry(f"p{old.replace('/', '-')}", to(svc(1)), old, filters=(rewrite(path=mod),))

    env.apply(
        listener(
            {
                "*": [
                    entry(
                        "host",
                        to(svc(2)),
                        "/host",
                        filters=(rewrite(hostname="rewritten.example.com"),),
                    ),
                    entry(
                        "full",
                        to(svc(1)),
                        "/full",
                        filters=(rewrite(path=PathModifier("ReplaceFullPath", "/one")),),
                    ),
                    prefix("/prefix/one", "/one"),
                    prefix("/strip-prefix", "/"),
                    prefix("/a", "/a/b"),
                ]
            }
        )
    )
    r = env.get("/host/x?q=1")
    assert (r.name, r.doc["host"], r.doc["path"], r.doc["query"]) == (
        "be2",
        "rewritten.example.com",
        "/host/x",
        "q=1",
    )
    expect = {
        "/full/a/b?z=1": ("/one", "z=1"),
        "/prefix/one/two": ("/one/two", ""),
        "/prefix/one": ("/one", ""),
        "/strip-prefix/three?x=y": ("/three", "x=y"),
        "/strip-prefix": ("/", ""),
        "/a": ("/a/b", ""),
        "/a/c": ("/a/b/c", ""),
    }
    for path, want in expect.items():
        doc = env.get(path).doc
        assert (doc["path"], doc["query"]) == want, path


# -- backends ---------------------------------------------------------------------------------


def test_weights_invalid_share_and_500s(env: Env) -> None:
    env.apply(
        listener(
            {
                "*": [
                    entry("weighted", to(svc(1, 3), svc(2, 1)), "/w"),
                    entry("half-invalid", to(svc(3, 1), invalid=1), "/half"),
                    entry("invalid", to(invalid=1), "/invalid"),
                    entry("none", to(), "/none"),
                    entry("zero", to(svc(1, 0)), "/zero"),
                ]
            }
        )
    )
    counts = env.call(many, 1000, "/w")
    print(f"\nweights 3:1 over 1000 requests: {dict(counts)}")
    assert set(counts) == {"be1", "be2"}
    assert abs(counts["be1"] - 750) < 70
    half = env.call(many, 400, "/half")
    print(f"valid:invalid 1:1 over 400 requests: {dict(half)}")
    assert set(half) == {"be3", "500"} and abs(half["500"] - 200) < 60
    assert env.get("/invalid").status == 500
    assert env.get("/none").status == 500
    assert env.get("/zero").status == 500


def test_timeouts(env: Env) -> None:
    env.apply(
        listener(
            {
                "*": [
                    entry("req", to(svc(1)), "/req", timeouts=Timeouts("300ms", None)),
                    entry("be", to(svc(1)), "/be", timeouts=Timeouts(None, "300ms")),
                    entry("both", to(svc(1)), "/both", timeouts=Timeouts("2s", "200ms")),
                ]
            }
        )
    )
    assert env.get("/req?delay=50").status == 200
    t = time.monotonic()
    assert env.get("/req?delay=1500").status == 504
    assert time.monotonic() - t < 1.2
    assert env.get("/be?delay=1000").status == 504
    assert env.get("/both?delay=600").status == 504
    assert env.get("/both?delay=20").status == 200


def test_grpc_routes_and_h2c_backends(env: Env) -> None:
    env.apply(
        listener(
            {
                "grpc.example.com": [
                    entry(
                        "g-add", to(svc(1, port=GRPC_PORT)), "/shop.Cart/Add", "Exact", grpc=True
                    ),
                    entry("g-cart", to(svc(2, port=GRPC_PORT)), "/shop.Cart", grpc=True),
                    entry(
                        "g-hdr",
                        to(svc(3, port=GRPC_PORT)),
                        "/[^/]+/Get",
                        "RegularExpression",
                        headers=(MatchRule("Exact", "x-pick", "three"),),
                        grpc=True,
                    ),
                ],
                # An HTTPRoute to an h2c Service (appProtocol kubernetes.io/h2c).
                "h2c.example.com": [entry("h2c", to(svc(3, port=GRPC_PORT, h2c=True)))],
                "h1.example.com": [entry("h1", to(svc(3, port=GRPC_PORT)))],
            }
        )
    )
    r = env.grpc("/shop.Cart/Add", "grpc.example.com")
    assert (r["name"], r["method"]) == ("be1", "/shop.Cart/Add")
    assert env.grpc("/shop.Cart/Remove", "grpc.example.com")["name"] == "be2"
    assert env.grpc("/other.Svc/Get", "grpc.example.com")["error"] == "UNIMPLEMENTED"  # 404
    assert env.grpc("/shop.Cart/Add", "h2c.example.com")["name"] == "be3"
    # Without appProtocol h2c the backend is spoken to in HTTP/1.1 and fails.
    assert "error" in env.grpc("/shop.Cart/Add", "h1.example.com")
    # HTTP/1.1 clients keep using the same listener.
    assert env.get("/", "h2c.example.com").status in (200, 415, 502, 503)


# -- TLS --------------------------------------------------------------------------------------


def test_https_certificates_by_sni(env: Env) -> None:
    a, b = env.certs["a.example.com"], env.certs["b.example.com"]
    env.apply(
        listener(
            {"a.example.com": [entry("a", to(svc(1)))]},
            name="https-a",
            port=443,
            protocol="HTTPS",
            hostname="a.example.com",
            certificates=(a,),
        ),
        listener(
            {"b.example.com": [entry("b", to(svc(2)))], "*": []},
            name="https-b",
            port=443,
            protocol="HTTPS",
            hostname="b.example.com",
            certificates=(b,),
        ),
        listener({"*": [entry("redirect", to(), filters=(redirect(scheme="https", code=301),))]}),
    )
    for host, cn, name in (
        ("a.example.com", "a.example.com", "be1"),
        ("b.example.com", "b.example.com", "be2"),
    ):
        assert env.call(tls_peer, VIP, 443, host)[0] == cn
        assert env.get("/x", host, port=443, tls=True).name == name
    r = env.get("/x?y", "a.example.com")
    assert (r.status, r.headers["location"]) == (301, "https://a.example.com/x?y")
    # A request for one listener's name on a connection made for the other's
    # (HTTP/2 coalescing, or a forged Host) is misdirected.
    wrong = env.get("/x", "b.example.com", port=443, tls=True, sni="a.example.com")
    assert (wrong.status, wrong.body) == (421, b"misdirected request")
    assert env.get("/x", "B.example.com:443", port=443, tls=True, sni="b.example.com").name == "be2"


def test_tls_passthrough_by_sni(env: Env) -> None:
    env.apply(
        L7Listener(
            "default/gw",
            "tls",
            (VIP,),
            8443,
            "TLS",
            "Passthrough",
            None,
            tls_routes=(
                TLSRouteEntry(
                    ObjectRef("TLSRoute", "default", "a"),
                    ("a.example.com",),
                    to(svc(1, port=TLS_PORT)),
                ),
                TLSRouteEntry(
                    ObjectRef("TLSRoute", "default", "wild"),
                    ("*.example.com",),
                    to(svc(2, port=TLS_PORT)),
                ),
                TLSRouteEntry(
                    ObjectRef("TLSRoute", "default", "bad"), ("bad.example.net",), to(invalid=1)
                ),
            ),
        )
    )
    cn, data = env.call(tls_peer, VIP, 8443, "a.example.com")
    assert cn == "backend.internal"  # the backend's own certificate: not terminated
    assert (body_of(data)["name"], body_of(data)["sni"]) == ("be1", "a.example.com")
    cn, data = env.call(tls_peer, VIP, 8443, "x.example.com")
    assert (body_of(data)["name"], body_of(data)["sni"]) == ("be2", "x.example.com")
    for sni in ("other.test", "bad.example.net", None):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            env.call(tls_peer, VIP, 8443, sni)


def test_tls_terminate_to_tcp_backends(env: Env) -> None:
    a = env.certs["a.example.com"]
    env.apply(
        L7Listener(
            "default/gw",
            "tls-term",
            (VIP,),
            9443,
            "TLS",
            "Terminate",
            None,
            certificates=(a,),
            tls_routes=(
                TLSRouteEntry(
                    ObjectRef("TLSRoute", "default", "t"), ("a.example.com",), to(svc(3))
                ),
            ),
            tcp_backends=to(svc(1)),
        )
    )
    cn, data = env.call(tls_peer, VIP, 9443, "a.example.com")
    assert cn == "a.example.com"  # terminated by the gateway
    assert body_of(data)["name"] == "be3" and body_of(data)["sni"] is None
    _, data = env.call(tls_peer, VIP, 9443, "other.test")
    assert body_of(data)["name"] == "be1"  # the TCPRoute takes the rest


# -- safety -----------------------------------------------------------------------------------


def test_injection_attempts_do_not_break_other_routes(env: Env) -> None:
    bad_values = [
        "v\nfrontend evil\n    bind :1",
        "v\r\nx",
        "\x00",
        "é",
    ]
    bad_entries = [
        entry(f"bad{i}", to(svc(3)), "/bad", headers=(MatchRule("Exact", "x-a", v),))
        for i, v in enumerate(bad_values)
    ]
    bad_entries += [
        entry("badname", to(svc(3)), "/bad", headers=(MatchRule("Exact", "x-a'b", "v"),)),
        entry("badrx", to(svc(3)), "/bad", headers=(MatchRule("RegularExpression", "x", "a)|(b"),)),
        entry("badrx2", to(svc(3)), "(", "RegularExpression"),
        entry("badhost", to(svc(3)), "/bad", filters=(rewrite(hostname="evil.com\nbind :2"),)),
    ]
    tricky = "} or { path / ' \" # $HOME \\ if -i --"
    result = env.worker.apply(
        [
            listener(
                {
                    "*": [
                        *bad_entries,
                        entry(
                            "tricky", to(svc(2)), "/t", headers=(MatchRule("Exact", "x-t", tricky),)
                        ),
                        entry("ok", to(svc(1)), "/"),
                    ]
                }
            )
        ]
    )
    assert result.ok, result
    assert {p.subject for p in result.problems} == {e.route for e in bad_entries}
    for p in result.problems:
        print(f"rejected: {p.subject}: {p.reason}")
    assert env.get("/").name == "be1"
    assert env.get("/bad").name == "be1"  # the bad rules are not served at all
    assert env.get("/t", headers={"x-t": tricky}).name == "be2"
    assert env.get("/t", headers={"x-t": "}"}).name == "be1"


# -- lifecycle --------------------------------------------------------------------------------


def test_hitless_reloads_under_keepalive_load(env: Env) -> None:
    def config(i: int) -> L7Listener:
        mod = headers_filter("response", set=[("x-generation", str(i))])
        return listener({"*": [entry(f"gen{i % 3}", to(svc(1), svc(2)), "/", filters=(mod,))]})

    env.apply(config(0))
    stop = threading.Event()
    stats: dict[str, Counter[str]] = {"keepalive": Counter(), "new": Counter()}

    def keepalive_loop() -> None:
        setns_current_thread(env.lab.client.ns)
        c = stats["keepalive"]
        conn = http.client.HTTPConnection(VIP, 80, timeout=5)
        while not stop.is_set():
            try:
                conn.request("GET", "/", headers={"Host": "example.com"})
                resp = conn.getresponse()
                resp.read()
                c["ok" if resp.status == 200 else f"status {resp.status}"] += 1
                if resp.getheader("connection", "").lower() == "close":
                    c["closed by proxy"] += 1
            except (OSError, http.client.HTTPException) as exc:
                c[f"error {type(exc).__name__}"] += 1
                conn.close()

    def new_connection_loop() -> None:
        setns_current_thread(env.lab.client.ns)
        c = stats["new"]
        while not stop.is_set():
            try:
                c["ok" if request("/").status == 200 else "bad status"] += 1
            except (OSError, http.client.HTTPException) as exc:
                c[f"error {type(exc).__name__}"] += 1

    threads = [
        threading.Thread(target=keepalive_loop),
        threading.Thread(target=keepalive_loop),
        threading.Thread(target=new_connection_loop),
    ]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for i in range(1, 21):
            result = env.worker.apply([config(i)])
            assert result.ok and result.changed, result
            time.sleep(0.15)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join()
    print(f"\n20 reloads under load: {stats}")
    for kind, c in stats.items():
        failed = sum(n for k, n in c.items() if k not in ("ok", "closed by proxy"))
        assert failed == 0, (kind, c)
    assert stats["keepalive"]["ok"] > 1000
    assert env.get("/").headers["x-generation"] == "20"


def test_adoption_and_restart(env: Env) -> None:
    ls = listener({"*": [entry("adopt", to(svc(1)))]})
    env.apply(ls)
    pid = env.worker.master_pid()
    assert pid is not None
    again = ProxyWorker(env.worker.run_dir, netns=env.lab.node.ns)
    assert again.running() and again.master_pid() == pid
    result = again.apply([ls])
    assert result.ok and not result.changed  # same configuration: no reload, no second master
    # A candidate that fails `haproxy -c` leaves the running configuration in force.
    fake = env.tmp / "haproxy-failing-check"
    fake.write_text(
        "#!/bin/sh\n"
        'for a in "$@"; do [ "$a" = -c ] && echo "[ALERT] simulated" >&2 && exit 1; done\n'
        'exec haproxy "$@"\n'
    )
    fake.chmod(0o755)
    again.haproxy = str(fake)
    result = again.apply(
        [replace(ls, virtual_hosts=(VirtualHost("*", (entry("x", to(svc(2))),)),))]
    )
    assert not result.ok and "simulated" in (result.error or ""), result
    assert env.get("/").name == "be1" and again.master_pid() == pid
    # A dead master is restarted by ensure_running.
    workers = [p.pid for p in env.worker.processes() if p.kind == "worker"]
    os.kill(pid, signal.SIGKILL)
    for w in workers:
        with pytest.raises(ProcessLookupError):
            for _ in range(100):
                os.kill(w, 0)
                time.sleep(0.05)
    assert not env.worker.running()
    assert env.worker.ensure_running()
    assert env.worker.master_pid() not in (None, pid)
    assert env.get("/").name == "be1"


def test_ipv6_vip(env: Env) -> None:
    env.apply(listener({"*": [entry("v6", to(svc(2)))]}, vips=(VIP, VIP6)))
    assert env.get("/", addr=VIP6).name == "be2"
    assert env.get("/", addr=VIP).name == "be2"


def test_l4_frontend_on_the_same_vip_with_nftables(env: Env) -> None:
    """HAProxy owns VIP:80 through the local address; the nftables dataplane
    DNATs VIP:7000 to a backend before local delivery."""
    lab = env.lab
    env.apply(listener({"*": [entry("l7", to(svc(1)))]}))
    dp = lab.call(lab.node, NftablesDataplane)
    try:
        l4 = L4Frontend(
            VIP, "tcp", 7000, (Backend(BE[2], HTTP_PORT, 1),), 0, FrontendSource("d", "g", "l")
        )
        result = lab.call(lab.node, dp.reconcile, DesiredState(vips=(VIP,), l4=(l4,)))
        assert result.failures == ()
        assert env.get("/", port=7000).name == "be2"  # L4: straight to the backend
        assert env.get("/").name == "be1"  # L7: through the proxy
        # and from the node itself (output hook / local delivery)
        assert lab.call(lab.node, request, "/", port=7000).name == "be2"
        assert lab.call(lab.node, request, "/").name == "be1"
    finally:
        lab.call(lab.node, dp.cleanup)


def test_backend_tls_policy_verifies_the_backend(env: Env) -> None:
    """Re-encryption to the backends' HTTPS port: the chain must lead to the
    policy's CA and the certificate must carry its hostname; either failing,
    no request reaches the backend."""

    def tls_to(hostname: str, ca: bytes | None) -> ServiceBackend:
        return svc(1, port=TLS_PORT, tls=BackendTLS("default/policy", hostname, ca))

    wrong_ca = env.certs["a.example.com"].cert_pem
    env.apply(
        listener(
            {
                "example.com": [
                    entry("good", to(tls_to("backend.internal", env.backend_ca)), "/good"),
                    entry("name", to(tls_to("other.internal", env.backend_ca)), "/name"),
                    entry("ca", to(tls_to("backend.internal", wrong_ca)), "/ca"),
                    entry("plain", to(svc(2)), "/plain"),
                ]
            }
        )
    )
    good = env.get("/good")
    assert good.status == 200, good
    assert good.doc["sni"] == "backend.internal"
    assert good.doc["name"] == "be1"
    for path in ("/name", "/ca"):
        refused = env.get(path)
        print(f"\n{path}: HTTP {refused.status}")
        assert refused.status in (502, 503), refused
        assert "name" not in refused.doc
    assert env.get("/plain").name == "be2"


def test_cors_preflight_answered_by_the_proxy_and_responses_marked(env: Env) -> None:
    strict = CORSPolicy(
        allow_origins=("https://www.foo.com", "https://*.bar.com"),
        allow_methods=("GET", "OPTIONS"),
        allow_headers=("x-header-1",),
        expose_headers=("x-header-3",),
        max_age=3600,
        allow_credentials=True,
    )
    any_origin = CORSPolicy(("*",), ("*",), ("*",), (), 5, False)
    env.apply(
        listener(
            {
                "example.com": [
                    entry(
                        "strict", to(svc(1)), "/strict", filters=(RouteFilter("CORS", cors=strict),)
                    ),
                    entry(
                        "open", to(svc(2)), "/open", filters=(RouteFilter("CORS", cors=any_origin),)
                    ),
                ]
            }
        )
    )
    preflight = {"Origin": "https://a.b.bar.com", "Access-Control-Request-Method": "GET"}
    got = env.get("/strict", method="OPTIONS", headers=preflight)
    assert got.status == 204 and got.body == b"", got  # answered by the proxy
    assert got.headers["access-control-allow-origin"] == "https://a.b.bar.com"
    assert got.headers["access-control-allow-methods"] == "GET, OPTIONS"
    assert got.headers["access-control-allow-headers"] == "x-header-1"
    assert got.headers["access-control-max-age"] == "3600"
    assert got.headers["access-control-allow-credentials"] == "true"

    # A preflight from an origin not allowed is refused by the proxy too.
    other = {"Origin": "https://bar.com.evil.example", "Access-Control-Request-Method": "GET"}
    got = env.get("/strict", method="OPTIONS", headers=other)
    assert got.status == 403 and "access-control-allow-origin" not in got.headers
    assert got.body == b"CORS: origin not allowed"
    # A plain OPTIONS (no preflight) still reaches the backend.
    assert env.get("/strict", method="OPTIONS").name == "be1"
    # A request from it is served, unmarked.
    got = env.get("/strict", headers={"Origin": "https://bar.com.evil.example"})
    assert got.name == "be1" and "access-control-allow-origin" not in got.headers

    simple = env.get("/strict", headers={"Origin": "https://www.foo.com"})
    assert simple.name == "be1"
    assert simple.headers["access-control-allow-origin"] == "https://www.foo.com"
    assert simple.headers["access-control-expose-headers"] == "x-header-3"
    assert "origin" in simple.headers["vary"].lower()
    assert "access-control-allow-origin" not in env.get("/strict").headers

    wild = {"Origin": "https://x.example:8443", "Access-Control-Request-Method": "PATCH"}
    got = env.get("/open", method="OPTIONS", headers=wild)
    assert got.status == 204
    assert got.headers["access-control-allow-origin"] == "https://x.example:8443"
    assert got.headers["access-control-allow-methods"] == "*"
    assert "access-control-allow-credentials" not in got.headers


def test_tls_terminate_and_passthrough_on_one_port_by_sni(env: Env) -> None:
    """TLSRouteModeMixed: one port, two listeners told apart by the SNI of the
    ClientHello; a reload keeps both (the terminating frontend listens on a
    UNIX socket the new worker takes over)."""
    a = env.certs["a.example.com"]
    passthrough = L7Listener(
        "default/gw", "pass", (VIP,), 8883, "TLS", "Passthrough", "b.example.com",
        tls_routes=(TLSRouteEntry(ObjectRef("TLSRoute", "default", "p"), ("b.example.com",),
                                  to(svc(2, port=TLS_PORT))),),
    )  # fmt: skip
    terminate = L7Listener(
        "default/gw", "term", (VIP,), 8883, "TLS", "Terminate", "a.example.com",
        certificates=(a,),
        tls_routes=(TLSRouteEntry(TLS_T, ("a.example.com",), to(svc(3))),),
    )  # fmt: skip
    env.apply(passthrough, terminate)
    cn, data = env.call(tls_peer, VIP, 8883, "a.example.com")
    assert cn == "a.example.com"  # terminated by the gateway
    assert body_of(data)["name"] == "be3"
    assert body_of(data)["headers"].get("x-forwarded-for") is None  # a TCP stream, as sent
    cn, data = env.call(tls_peer, VIP, 8883, "b.example.com")
    assert cn == "backend.internal"  # passed through to the backend's own TLS
    assert (body_of(data)["name"], body_of(data)["sni"]) == ("be2", "b.example.com")
    for sni in ("c.example.com", None):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            env.call(tls_peer, VIP, 8883, sni)
    moved = replace(
        terminate,
        tls_routes=(
            TLSRouteEntry(ObjectRef("TLSRoute", "default", "t"), ("a.example.com",), to(svc(1))),
        ),
    )
    env.apply(passthrough, moved)
    _, data = env.call(tls_peer, VIP, 8883, "a.example.com")
    assert body_of(data)["name"] == "be1"
    _, data = env.call(tls_peer, VIP, 8883, "b.example.com")
    assert body_of(data)["name"] == "be2"


def test_backend_tls_presents_the_gateway_client_certificate(env: Env) -> None:
    """A backend that requires a client certificate gets the Gateway's
    (spec.tls.backend.clientCertificateRef); without it, no request gets through."""

    def mtls(client: TLSCertificate | None) -> ServiceBackend:
        tls = BackendTLS("default/policy", "backend.internal", env.backend_ca, client)
        return svc(1, port=MTLS_PORT, tls=tls)

    env.apply(
        listener(
            {
                "example.com": [
                    entry("with", to(mtls(env.client_cert)), "/with"),
                    entry("without", to(mtls(None)), "/without"),
                ]
            }
        )
    )
    got = env.get("/with")
    assert got.status == 200, got
    assert (got.doc["name"], got.doc["client"]) == ("be1", "gateway.client")
    refused = env.get("/without")
    assert refused.status in (502, 503), refused


def test_https_listener_checks_client_certificates(env: Env) -> None:
    """Gateway spec.tls.frontend: AllowValidOnly refuses a client without a
    certificate from the CA, AllowInsecureFallback lets it through."""
    a = env.certs["a.example.com"]
    good = env.tmp / "client-good.pem"
    good.write_bytes(env.client_cert.cert_pem + env.client_cert.key_pem)
    other = env.tmp / "client-other.pem"
    other.write_bytes(env.certs["b.example.com"].cert_pem + env.certs["b.example.com"].key_pem)
    ca = ClientValidation(env.client_cert.cert_pem)

    def https(port: int, validation: ClientValidation) -> L7Listener:
        return replace(
            listener(
                {"a.example.com": [entry("a", to(svc(1)))]},
                name=f"https-{port}",
                port=port,
                protocol="HTTPS",
                certificates=(a,),
            ),
            client_validation=validation,
        )

    env.apply(https(4443, ca), https(5443, replace(ca, insecure_fallback=True)))

    def get(port: int, cert: str | None) -> Reply:
        return env.get("/", "a.example.com", port=port, tls=True, client_cert=cert)

    assert get(4443, str(good)).name == "be1"
    for cert in (None, str(other)):
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            get(4443, cert)
    for cert in (str(good), None, str(other)):
        assert get(5443, cert).name == "be1"
