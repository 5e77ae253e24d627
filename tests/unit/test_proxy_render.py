"""HAProxy configuration rendering: pure, plus `haproxy -c` on every output.

`haproxy -c` needs no root and binds nothing; every configuration rendered here
is checked by it (skipped only where haproxy is not installed).  Injection
attempts must either be refused (a Problem naming the route) or stay inside
their quoted word: the configuration with the hostile value has exactly the
shape of the configuration with a benign one.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from agent.filters import (
    BackendObjectReference,
    CORSPolicy,
    HeaderModifier,
    PathModifier,
    RequestMirror,
    RequestRedirect,
    Retry,
    RouteFilter,
    Timeouts,
    URLRewrite,
)
from agent.proxy import escape
from agent.proxy.budget import DEFAULT_BUDGET, Budget
from agent.proxy.certificates import certificate_id
from agent.proxy.escape import Unrepresentable
from agent.proxy.http_filters import cors_origin_pattern, duration_ms
from agent.proxy.http_frontend import H2C
from agent.proxy.render import RenderedConfig, render
from agent.proxy.worker import CHECK_TIMEOUT
from agent.refs import ObjectRef
from agent.sources.files import load_directory
from agent.state import (
    Backend,
    BackendSet,
    HTTPMatch,
    HTTPRouteEntry,
    L7Listener,
    MatchRule,
    ServiceBackend,
    TLSCertificate,
    TLSRouteEntry,
    VirtualHost,
)
from agent.translate.core import translate

HAPROXY = shutil.which("haproxy") or (
    "/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").exists() else None
)
GOLDEN = Path(__file__).parent.parent / "golden"
VIP = "192.0.2.10"


def svc(name: str = "be1", weight: int = 1, **kw: Any) -> ServiceBackend:
    return ServiceBackend(f"default/{name}:80", weight, (Backend("10.0.0.1", 8080, 1),), **kw)


def entry(
    route: str = "r",
    path: str = "/",
    kind: str = "PathPrefix",
    *,
    backends: BackendSet | None = None,
    rule: int = 0,
    headers: tuple[MatchRule, ...] = (),
    query: tuple[MatchRule, ...] = (),
    method: str | None = None,
    filters: tuple[RouteFilter, ...] = (),
    timeouts: Timeouts | None = None,
    grpc: bool = False,
    retry: Retry | None = None,
) -> HTTPRouteEntry:
    return HTTPRouteEntry(
        ObjectRef("HTTPRoute", "default", route),
        rule,
        HTTPMatch(kind, path, headers, query, method),
        filters,
        backends if backends is not None else BackendSet((svc(),)),
        timeouts,
        grpc,
        retry,
    )


def http(*hosts: tuple[str, list[HTTPRouteEntry]], **kw: Any) -> L7Listener:
    return L7Listener(
        kw.pop("gateway", "default/gw"),
        kw.pop("name", "http"),
        kw.pop("vips", (VIP,)),
        kw.pop("port", 80),
        kw.pop("protocol", "HTTP"),
        kw.pop("tls_mode", None),
        kw.pop("hostname", None),
        virtual_hosts=tuple(VirtualHost(h, tuple(es)) for h, es in hosts),
        **kw,
    )


def check(rc: RenderedConfig, tmp_path: Path) -> None:
    """Write the configuration and its files, and have haproxy check it."""
    if HAPROXY is None:
        pytest.skip("haproxy is not installed")
    for rel, data in rc.files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    tmp_path.mkdir(parents=True, exist_ok=True)
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(rc.text)
    proc = subprocess.run([HAPROXY, "-c", "-q", "-f", str(cfg)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr + "\n" + rc.text


def is_e(index: int) -> str:
    """The condition `route entry <index> is selected`."""
    return f"{{ var(txn.r) -m int {index} }}"


def lines(rc: RenderedConfig, pattern: str) -> list[str]:
    stripped = (ln.strip() for ln in rc.text.splitlines())
    return [ln for ln in stripped if re.search(pattern, ln)]


# -- whole configurations --------------------------------------------------------------------


def test_golden_http_routing_renders_and_checks(tmp_path: Path) -> None:
    desired = translate(load_directory(GOLDEN / "http-routing")).desired
    assert desired.l7
    rc = render(desired.l7, str(tmp_path))
    assert rc.problems == ()
    check(rc, tmp_path)
    # GRPC and h2c backends speak HTTP/2 to the servers.
    assert all("proto h2" in ln for ln in lines(rc, r"^\s+server "))


def test_empty_configuration_checks(tmp_path: Path) -> None:
    rc = render([], str(tmp_path))
    assert "gatewaylb_health" in rc.text and rc.problems == ()
    check(rc, tmp_path)


def test_entries_keep_precedence_order_and_hosts_most_specific_first(tmp_path: Path) -> None:
    listener = http(
        ("*", [entry("any")]),
        ("*.example.com", [entry("wild")]),
        ("a.b.example.com", [entry("exact2")]),
        ("*.b.example.com", [entry("wild2")]),
        ("shop.example.com", [entry("e1", "/x", "Exact"), entry("e2", "/x"), entry("e3", "/")]),
    )
    rc = render([listener], str(tmp_path))
    check(rc, tmp_path)
    hosts = [ln.split(": ", 1)[1] for ln in lines(rc, r"# virtual host \d+: ")]
    assert hosts == [
        "'shop.example.com'",
        "'a.b.example.com'",
        "'*.b.example.com'",
        "'*.example.com'",
        "'*'",
    ]
    vh = lines(rc, r"set-var\(txn\.vh\)")
    assert vh[0].endswith("if !vhset { var(txn.host) -m str -- 'shop.example.com' }")
    assert vh[2].endswith("if !vhset { var(txn.host) -m end -- '.b.example.com' }")
    assert vh[4].endswith("if !vhset")  # "*": any host
    order = [ln.split(": ")[1] for ln in lines(rc, r"# entry \d+:")]
    assert order == [
        "HTTPRoute default/e1 rule 0",
        "HTTPRoute default/e2 rule 0",
        "HTTPRoute default/e3 rule 0",
        "HTTPRoute default/exact2 rule 0",
        "HTTPRoute default/wild2 rule 0",
        "HTTPRoute default/wild rule 0",
        "HTTPRoute default/any rule 0",
    ]
    # first match wins: each selection only applies while nothing is selected
    assert all("if !rset" in ln for ln in lines(rc, r"set-var\(txn\.r\)"))
    assert lines(rc, "return status 404")[0].endswith("if !rset")


def test_path_prefix_is_segment_aware(tmp_path: Path) -> None:
    rc = render([http(("*", [entry("p", "/foo/"), entry("root", "/")]))], str(tmp_path))
    check(rc, tmp_path)
    selections = lines(rc, r"set-var\(txn\.r\)")
    assert selections == [
        "http-request set-var(txn.r) int(0) if !rset { var(txn.vh) -m int 0 }"
        " { path,concat(/) -m beg -- '/foo/' }",
        "http-request set-var(txn.r) int(1) if !rset { var(txn.vh) -m int 0 }",  # "/": any path
    ]


def test_matches_render_as_anonymous_acls(tmp_path: Path) -> None:
    e = entry(
        "m",
        "/v[0-9]+/.*",
        "RegularExpression",
        headers=(MatchRule("Exact", "X-A", "1"), MatchRule("RegularExpression", "x-b", "b+")),
        query=(MatchRule("Exact", "animal", "whale"),),
        method="PATCH",
    )
    rc = render([http(("*", [e]))], str(tmp_path))
    check(rc, tmp_path)
    assert lines(rc, r"set-var\(txn\.r\)") == [
        "http-request set-var(txn.r) int(0) if !rset { var(txn.vh) -m int 0 }"
        " { path -m reg -- '^(?:/v[0-9]+/.*)$' }"
        " { 'req.fhdr(X-A)' -m str -- '1' }"
        " { 'req.fhdr(x-b)' -m reg -- '^(?:b+)$' }"
        " { 'urlp(animal)' -m str -- 'whale' }"
        " { method -m str -- 'PATCH' }"
    ]
    # Only the fixed selection ACLs are named (a named ACL costs HAProxy a
    # linear scan at every definition and use).
    assert lines(rc, r"^acl ") == [
        "acl vhset var(txn.vh) -m found",
        "acl rset var(txn.r) -m found",
    ]


def test_weights_become_rand_ranges_and_invalid_share_500(tmp_path: Path) -> None:
    backends = BackendSet((svc("a", 3), svc("b", 1), svc("zero", 0)), invalid_weight=2)
    rc = render([http(("*", [entry("w", backends=backends)]))], str(tmp_path))
    check(rc, tmp_path)
    assert f"http-request set-var(txn.pick) rand(6) if {is_e(0)}" in rc.text
    uses = [ln.split(" if ")[1] for ln in lines(rc, "^use_backend ")]
    assert uses == [
        f"{is_e(0)} {{ var(txn.pick) -m int 0:2 }}",
        f"{is_e(0)} {{ var(txn.pick) -m int 3:3 }}",
    ]
    assert f"http-request return status 500 if {is_e(0)} {{ var(txn.pick) -m int 4:5 }}" in rc.text
    assert "zero" not in rc.text  # weight 0 takes no request


@pytest.mark.parametrize(
    "backends",
    [BackendSet(()), BackendSet((), invalid_weight=1), BackendSet((svc("z", 0),))],
    ids=["no-backends", "all-invalid", "all-weight-zero"],
)
def test_rules_without_a_usable_backend_answer_500(backends: BackendSet, tmp_path: Path) -> None:
    rc = render([http(("*", [entry("x", backends=backends)]))], str(tmp_path))
    check(rc, tmp_path)
    assert f"http-request return status 500 if {is_e(0)}" in rc.text
    assert not lines(rc, "^use_backend")


def test_h2c_and_grpc_backends_use_proto_h2(tmp_path: Path) -> None:
    rc = render(
        [
            http(
                (
                    "*",
                    [
                        entry("g", "/svc.A/M", "Exact", grpc=True),
                        entry("h", "/h2c", backends=BackendSet((svc("h2", app_protocol=H2C),))),
                        entry("plain", "/"),
                    ],
                )
            )
        ],
        str(tmp_path),
    )
    check(rc, tmp_path)
    servers = lines(rc, r"^server ")
    assert sum("proto h2" in s for s in servers) == 2 and len(servers) == 3


def test_timeouts_per_backend(tmp_path: Path) -> None:
    rc = render(
        [
            http(
                (
                    "*",
                    [
                        entry("a", "/a", timeouts=Timeouts("10s", "1500ms")),
                        entry("b", "/b", timeouts=Timeouts("1m", None)),
                        entry("c", "/c", timeouts=Timeouts("0s", None)),
                    ],
                )
            )
        ],
        str(tmp_path),
    )
    check(rc, tmp_path)
    assert sorted(lines(rc, r"^timeout server \d+$")) == [
        "timeout server 1500",
        "timeout server 60000",  # defaults
        "timeout server 60000",
    ]
    assert len(lines(rc, r"^backend ")) == 3  # the untimed one shares nothing


def test_a_retry_policy_retries_on_its_codes_on_the_same_server(tmp_path: Path) -> None:
    rc = render(
        [
            http(
                (
                    "*",
                    [
                        entry("a", "/a", retry=Retry((500,), 3, None)),
                        entry("b", "/b", retry=Retry((504, 500, 502, 503), None, None)),
                        entry("c", "/c"),
                    ],
                )
            )
        ],
        str(tmp_path),
    )
    check(rc, tmp_path)  # haproxy -c accepts it
    assert lines(rc, r"^retries \d+$") == ["retries 3"]  # b: HAProxy's default (3)
    assert sorted(lines(rc, r"^retry-on .*")) == [
        "retry-on conn-failure 500",
        "retry-on conn-failure 500 502 503 504",
    ]
    assert not lines(rc, r"redispatch")  # a retry goes to the server that failed
    assert len(lines(rc, r"^backend ")) == 3


def test_duration_parsing() -> None:
    assert duration_ms("1h2m3s4ms") == 3_723_004
    assert duration_ms("500ms") == 500
    for bad in ("", "1d", "ms", "1.5s", "10"):
        with pytest.raises(Unrepresentable):
            duration_ms(bad)


# -- filters ----------------------------------------------------------------------------------


def redirect(**kw: Any) -> RouteFilter:
    args = {"scheme": None, "hostname": None, "path": None, "port": None, "status_code": 302}
    args.update(kw)
    return RouteFilter("RequestRedirect", request_redirect=RequestRedirect(**args))


@pytest.mark.parametrize(
    ("listener_port", "kw", "location"),
    [
        (80, {}, "http://%[var(txn.host)]%[pathq]"),
        (8080, {}, "http://%[var(txn.host)]:8080%[pathq]"),
        (8080, {"scheme": "https"}, "https://%[var(txn.host)]%[pathq]"),
        (80, {"scheme": "https", "port": 8443}, "https://%[var(txn.host)]:8443%[pathq]"),
        (80, {"hostname": "x.example.com", "port": 80}, "http://x.example.com%[pathq]"),
        (8080, {"scheme": "http"}, "http://%[var(txn.host)]%[pathq]"),
    ],
)
def test_redirect_location_port_rules(
    listener_port: int, kw: dict[str, Any], location: str, tmp_path: Path
) -> None:
    e = entry("r", filters=(redirect(**kw, status_code=308),), backends=BackendSet(()))
    rc = render([http(("*", [e]), port=listener_port)], str(tmp_path))
    check(rc, tmp_path)
    assert f"http-request redirect location '{location}' code 308 if {is_e(0)}" in rc.text
    assert "return status 500" not in rc.text  # a redirect needs no backend


def test_path_rewrites(tmp_path: Path) -> None:
    def pfx(route: str, path: str, new: str) -> HTTPRouteEntry:
        mod = URLRewrite(None, PathModifier("ReplacePrefixMatch", new))
        return entry(route, path, filters=(RouteFilter("URLRewrite", url_rewrite=mod),))

    full = URLRewrite("new.example.com", PathModifier("ReplaceFullPath", "/100%/x"))
    rc = render(
        [
            http(
                (
                    "*",
                    [
                        entry("full", "/f", filters=(RouteFilter("URLRewrite", url_rewrite=full),)),
                        pfx("p1", "/prefix/one", "/one"),
                        pfx("p2", "/strip", "/"),
                        pfx("p3", "/", "/base"),
                        pfx("p4", "/a.b", "/c"),
                    ],
                )
            )
        ],
        str(tmp_path),
    )
    check(rc, tmp_path)
    assert f"http-request set-header host 'new.example.com' if {is_e(0)}" in rc.text
    assert f"http-request set-path '/100%%/x' if {is_e(0)}" in rc.text
    assert f"http-request replace-path '^/prefix/one(/.*)?$' '/one\\1' if {is_e(1)}" in rc.text
    assert lines(rc, rf"replace-path .* if {re.escape(is_e(2))}$") == [
        f"http-request replace-path '^/strip$' '/' if {is_e(2)}",
        f"http-request replace-path '^/strip(/.*)$' '\\1' if {is_e(2)}",
    ]
    assert lines(rc, rf"replace-path .* if {re.escape(is_e(3))}$") == [
        f"http-request replace-path '^(/.+)$' '/base\\1' if {is_e(3)}",
        f"http-request replace-path '^/$' '/base' if {is_e(3)}",
    ]
    assert "'^/a\\.b(/.*)?$'" in rc.text  # the prefix is a literal, not a regex


def test_header_filters_and_backend_filters(tmp_path: Path) -> None:
    req = HeaderModifier(set=(("X-S", "a%b"),), add=(("X-A", "1"),), remove=("X-R",))
    resp = HeaderModifier(set=(("X-Resp", "r"),), add=(), remove=("Server",))
    be = svc(
        "f",
        filters=(RouteFilter("RequestHeaderModifier", request_header_modifier=req),),
    )
    rc = render(
        [
            http(
                (
                    "*",
                    [
                        entry(
                            "h",
                            filters=(
                                RouteFilter("RequestHeaderModifier", request_header_modifier=req),
                                RouteFilter(
                                    "ResponseHeaderModifier", response_header_modifier=resp
                                ),
                            ),
                            backends=BackendSet((be,)),
                        )
                    ],
                )
            )
        ],
        str(tmp_path),
    )
    check(rc, tmp_path)
    assert lines(rc, rf"-header .* if {re.escape(is_e(0))}$") == [
        f"http-request set-header 'X-S' 'a%%b' if {is_e(0)}",
        f"http-request add-header 'X-A' '1' if {is_e(0)}",
        f"http-request del-header 'X-R' if {is_e(0)}",
        f"http-response set-header 'X-Resp' 'r' if {is_e(0)}",
        f"http-response del-header 'Server' if {is_e(0)}",
    ]
    # the backendRef's own filter lives in its backend, unconditionally
    assert "http-request set-header 'X-S' 'a%%b'" in lines(rc, r"^http-request set-header")


def test_request_mirror_and_unknown_filters_drop_the_rule(tmp_path: Path) -> None:
    mirror = RouteFilter(
        "RequestMirror",
        request_mirror=RequestMirror(BackendObjectReference("", "Service", "m", None, 80), 1, 1),
    )
    rc = render(
        [http(("*", [entry("mirror", "/m", filters=(mirror,)), entry("ok", "/")]))],
        str(tmp_path),
    )
    check(rc, tmp_path)
    assert [(str(p.subject), p.rule) for p in rc.problems] == [("HTTPRoute default/mirror", 0)]
    assert "default/mirror" not in rc.text and "default/ok" in rc.text


def test_a_bad_match_drops_every_match_of_its_rule(tmp_path: Path) -> None:
    bad = MatchRule("RegularExpression", "x", "(")
    rc = render(
        [
            http(
                ("a.example.com", [entry("r", "/one", rule=1), entry("r", "/two", rule=0)]),
                ("*", [entry("r", "/three", rule=1, headers=(bad,)), entry("r", "/", rule=2)]),
            )
        ],
        str(tmp_path),
    )
    check(rc, tmp_path)
    assert [(str(p.subject), p.rule) for p in rc.problems] == [("HTTPRoute default/r", 1)]
    assert [ln for ln in lines(rc, "# entry")] == [
        "# entry 0: HTTPRoute default/r rule 0",
        "# entry 1: HTTPRoute default/r rule 2",
    ]


# -- injection ------------------------------------------------------------------------------

INJECTIONS = [
    "v\nfrontend evil\n    bind :1",
    "v\r\nbackend x",
    "a\x00b",
    "caf\u00e9",
    "\u2028",
    "'",
    "it's",
    '"',
    'a"b\\"c',
    "#",
    "a #comment",
    "\\",
    "a\\nb",
    "$HOME",
    "${HOME}",
    '"$HOME"',
    "%[src]",
    "%",
    "} or {",
    "}",
    "{",
    "if",
    "unless TRUE",
    "a b  c",
    "\t",
    "-i",
    "-f /etc/passwd",
    "--",
    "x) || (y",
    "a,b)",
    "'; http-request deny #",
    "' 'x' '",
    "\\x0a",
    "x" * 5000,
]


def _skeleton(text: str) -> list[str]:
    """The configuration with every quoted word blanked (one token per word)."""
    word = re.compile(r"(?:'[^']*'|\\')+")
    # An exact value "}" is written as a regex (see http_frontend.string_criterion).
    return [word.sub("Q", ln).replace(" -m reg -- ", " -m str -- ") for ln in text.splitlines()]


def _render_value(slot: str, value: str, tmp_path: Path) -> RenderedConfig:
    hm = HeaderModifier
    benign = entry("ok", "/ok")
    cases: dict[str, HTTPRouteEntry] = {
        "header-value": entry(headers=(MatchRule("Exact", "x-a", value),)),
        "header-regex": entry(headers=(MatchRule("RegularExpression", "x-a", value),)),
        "header-name": entry(headers=(MatchRule("Exact", value, "v"),)),
        "query-value": entry(query=(MatchRule("Exact", "q", value),)),
        "query-name": entry(query=(MatchRule("Exact", value, "v"),)),
        "path-exact": entry(path="/" + value, kind="Exact"),
        "path-prefix": entry(path="/" + value, kind="PathPrefix"),
        "path-regex": entry(path=value, kind="RegularExpression"),
        "method": entry(method=value),
        "set-header-value": entry(
            filters=(
                RouteFilter(
                    "RequestHeaderModifier",
                    request_header_modifier=hm((("x-a", value),), (), ()),
                ),
            )
        ),
        "set-header-name": entry(
            filters=(
                RouteFilter(
                    "ResponseHeaderModifier",
                    response_header_modifier=hm((), ((value, "v"),), (value,)),
                ),
            )
        ),
        "redirect-host": entry(filters=(redirect(hostname=value),), backends=BackendSet(())),
        "redirect-path": entry(
            filters=(redirect(path=PathModifier("ReplaceFullPath", "/" + value)),),
            backends=BackendSet(()),
        ),
        "rewrite-prefix": entry(
            path="/p",
            filters=(
                RouteFilter(
                    "URLRewrite",
                    url_rewrite=URLRewrite(None, PathModifier("ReplacePrefixMatch", "/" + value)),
                ),
            ),
        ),
        "rewrite-host": entry(
            filters=(RouteFilter("URLRewrite", url_rewrite=URLRewrite(value, None)),)
        ),
        "vhost": entry(),
    }
    host = value if slot == "vhost" else "h.example.com"
    return render([http((host, [cases[slot]]), ("*", [benign]))], str(tmp_path))


SLOTS = [
    "header-value",
    "header-regex",
    "header-name",
    "query-value",
    "query-name",
    "path-exact",
    "path-prefix",
    "path-regex",
    "method",
    "set-header-value",
    "set-header-name",
    "redirect-host",
    "redirect-path",
    "rewrite-prefix",
    "rewrite-host",
    "vhost",
]


@pytest.mark.parametrize("slot", SLOTS)
def test_injection_is_refused_or_neutralised(slot: str, tmp_path: Path) -> None:
    baseline = _render_value(slot, "GET" if slot == "method" else "benign", tmp_path)
    assert baseline.problems == (), baseline.problems
    shape = _skeleton(baseline.text)
    refused = 0
    configs = []
    for value in INJECTIONS:
        rc = _render_value(slot, value, tmp_path)
        if rc.problems:
            # Refused: the rule is left out and reported; the rest is served.
            assert {str(p.subject) for p in rc.problems} <= {
                "HTTPRoute default/r",
                "Gateway default/gw listener http",
            }
            assert "HTTPRoute default/ok" in rc.text
            refused += 1
        else:
            # Neutralised: the value stayed inside its quoted words.
            assert _skeleton(rc.text) == shape, (slot, value)
        configs.append(rc)
    # Every accepted variant also passes HAProxy's own parser.
    for i, rc in enumerate(configs):
        if not rc.problems:
            check(rc, tmp_path / f"v{i}")
    print(f"{slot}: {refused} refused, {len(INJECTIONS) - refused} neutralised")


def test_word_quoting() -> None:
    assert escape.word("abc") == "'abc'"
    assert escape.word("it's") == "'it'\\''s'"
    assert escape.word('$HOME #x \\ "') == "'$HOME #x \\ \"'"
    for bad in ("a\nb", "a\rb", "\x00", "é", "x" * 5000):
        with pytest.raises(Unrepresentable):
            escape.word(bad)
    assert escape.logformat("100%") == "'100%%'"


def test_regex_validation() -> None:
    assert escape.anchored_regex("a|b") == "^(?:a|b)$"
    for bad in ("(", "a)|(b", "\\Qx", "(*UTF)x", "(?x)a#)", "(?#c)x", "[", "a{2,1}"):
        with pytest.raises(Unrepresentable):
            escape.anchored_regex(bad)


# -- TLS --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> TLSCertificate:
    d = tmp_path_factory.mktemp("cert")
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=a.test"),
            *("-keyout", str(d / "k.pem"), "-out", str(d / "c.pem")),
        ],
        check=True,
        capture_output=True,
    )
    return TLSCertificate("default/a", (d / "c.pem").read_bytes(), (d / "k.pem").read_bytes())


def test_https_listeners_share_a_bind_with_a_crt_list(cert: TLSCertificate, tmp_path: Path) -> None:
    a = http(
        ("a.test", [entry("a")]),
        name="a",
        port=443,
        protocol="HTTPS",
        tls_mode="Terminate",
        hostname="a.test",
        certificates=(cert,),
    )
    b = http(
        ("*", [entry("b")]),
        name="b",
        port=443,
        protocol="HTTPS",
        tls_mode="Terminate",
        certificates=(cert,),
    )
    rc = render([b, a], str(tmp_path))
    check(rc, tmp_path)
    binds = lines(rc, r"^bind \d")
    assert len(binds) == 1 and " ssl crt-list " in binds[0] and "alpn h2,http/1.1" in binds[0]
    crt_list = next(v for k, v in rc.files.items() if "crt-list" in k).decode().splitlines()
    assert crt_list[0].endswith(" a.test") and not crt_list[1].endswith(" a.test")
    pem = rc.files[f"certs/{certificate_id(cert)}.pem"]
    assert b"BEGIN CERTIFICATE" in pem and b"PRIVATE KEY" in pem
    # listener selection: the listener with a hostname is tried first
    assert (
        "http-request set-var(txn.l) int(0) if !lset { var(txn.host) -m str -- 'a.test' }"
        in rc.text
    )
    assert "http-request set-var(txn.l) int(1) if !lset" in rc.text


def test_rejected_certificate_drops_only_its_listener(cert: TLSCertificate, tmp_path: Path) -> None:
    https = http(
        ("*", [entry("a")]),
        name="https",
        port=443,
        protocol="HTTPS",
        tls_mode="Terminate",
        certificates=(cert,),
    )
    plain = http(("*", [entry("b")]))
    rc = render(
        [https, plain], str(tmp_path), rejected_certificates={certificate_id(cert): "bad key"}
    )
    check(rc, tmp_path)
    assert {str(p.subject) for p in rc.problems} == {"Gateway default/gw listener https"}
    assert ":443" not in rc.text and ":80" in rc.text


def test_tls_passthrough_and_terminate(cert: TLSCertificate, tmp_path: Path) -> None:
    be = BackendSet((svc("tls"),))
    passthrough = L7Listener(
        "default/gw",
        "pt",
        (VIP, "2001:db8::1"),
        443,
        "TLS",
        "Passthrough",
        None,
        tls_routes=(
            TLSRouteEntry(
                ObjectRef("TLSRoute", "default", "w"), ("*.test",), BackendSet((svc("w", 1),), 1)
            ),
            TLSRouteEntry(ObjectRef("TLSRoute", "default", "a"), ("a.test", "b.test"), be),
        ),
    )
    terminate = L7Listener(
        "default/gw",
        "term",
        (VIP,),
        8443,
        "TLS",
        "Terminate",
        None,
        certificates=(cert,),
        tls_routes=(TLSRouteEntry(ObjectRef("TLSRoute", "default", "t"), ("a.test",), be),),
        tcp_backends=BackendSet((svc("tcp"),)),
    )
    rc = render([passthrough, terminate], str(tmp_path))
    check(rc, tmp_path)
    assert rc.problems == ()
    assert lines(rc, r"^bind .*:443") == ["bind 192.0.2.10:443", "bind [2001:db8::1]:443"]
    assert "tcp-request content reject if !tls_hello" in rc.text
    # exact SNI names before the wildcard, whatever the route order
    snis = lines(rc, r"set-var\(txn\.r\) .* var\(txn\.host\)")[:3]
    assert [s.split("--")[1].strip() for s in snis] == [
        "'a.test' }",
        "'b.test' }",
        "'.test' }",
    ]
    invalid_share = f"tcp-request content reject if {is_e(0)} {{ var(txn.pick) -m int 1:1 }}"
    assert invalid_share in rc.text
    assert "tcp-request content set-var(txn.host) ssl_fc_sni,lower" in rc.text
    assert all("mode tcp" in s for s in rc.text.split("\nbackend ")[1:])


def test_listeners_of_another_kind_on_a_used_port_are_refused(tmp_path: Path) -> None:
    a = http(("*", [entry("a")]))
    b = L7Listener("default/gw", "tls", (VIP,), 80, "TLS", "Passthrough", None)
    rc = render([a, b], str(tmp_path))
    check(rc, tmp_path)
    assert [str(p.subject) for p in rc.problems] == ["Gateway default/gw listener tls"]


# -- long conjunctions and the budget ---------------------------------------------------------


def test_a_long_match_is_chained_over_lines_of_at_most_64_words(tmp_path: Path) -> None:
    headers = tuple(MatchRule("Exact", f"x-h{i}", f"v{i}") for i in range(16))
    query = tuple(MatchRule("RegularExpression", f"q{i}", f"[0-9]{{{i + 1}}}") for i in range(16))
    e = entry("long", "/a", headers=headers, query=query, method="GET")
    rc = render([http(("*", [e, entry("short", "/b")]))], str(tmp_path))
    check(rc, tmp_path)
    selection = lines(rc, r"set-var\(txn\.[mr]\) int")
    # 34 conditions, 7 a line: 4 links through txn.m, then txn.r.
    assert [ln.split(" if ")[0] for ln in selection] == [
        "http-request set-var(txn.m) int(1)",
        "http-request set-var(txn.m) int(2)",
        "http-request set-var(txn.m) int(3)",
        "http-request set-var(txn.m) int(4)",
        "http-request set-var(txn.r) int(0)",
        "http-request set-var(txn.r) int(1)",
    ]
    assert selection[1].split(" if ")[1].startswith("{ var(txn.m) -m int 1 } ")
    assert selection[4].split(" if ")[1].startswith("{ var(txn.m) -m int 4 } ")
    assert all(len(ln.split()) <= 64 for ln in rc.text.splitlines())
    assert sum(ln.count("{ ") for ln in selection[:5]) == 34 + 1 + 4  # + vhost + links


def _routes(count: int, rules: int, matches: int, headers: int, prefix: str = "r") -> list[Any]:
    out = []
    for r in range(count):
        for rule in range(rules):
            for m in range(matches):
                hs = tuple(MatchRule("Exact", f"x-h{h}", f"v{h}-{m}") for h in range(headers))
                out.append(entry(f"{prefix}{r:02d}", f"/p{rule}/{m}", rule=rule, headers=hs))
    return out


def test_a_route_over_the_per_route_budget_is_left_out_and_named(tmp_path: Path) -> None:
    budget = Budget(route_acls=200)
    big = _routes(1, 4, 8, 8, "big")  # 32 entries of 1 + 9 + 1 ACLs
    small = _routes(3, 1, 2, 1, "small")
    rc = render([http(("*", big + small))], str(tmp_path), budget=budget)
    check(rc, tmp_path)
    assert [(str(p.subject), p.rule) for p in rc.problems] == [("HTTPRoute default/big00", None)]
    reason = rc.problems[0].reason
    assert "needs 352 ACLs" in reason and "the limit is 200 per route" in reason
    assert "default/big00" not in rc.text and rc.text.count("# entry") == 6
    # Counted on every hostname it is rendered on: the same route on 2 hosts.
    budget = Budget(route_acls=2 * 4 * 3)  # 4 entries of 1 + 1 + 1 ACLs, per host
    two_hosts = http(("a.example", _routes(1, 2, 2, 0)), ("b.example", _routes(1, 2, 2, 0)))
    assert render([two_hosts], str(tmp_path), budget=budget).problems == ()
    three = http(*((f"{h}.example", _routes(1, 2, 2, 0)) for h in "abc"))
    assert len(render([three], str(tmp_path), budget=budget).problems) == 1


def test_the_routes_needing_most_are_left_out_first_when_the_total_is_over(
    tmp_path: Path,
) -> None:
    budget = Budget(acls=400)
    big = _routes(3, 2, 8, 6, "big")  # 3 routes of 16 x (1 + 7 + 1) = 144 ACLs
    small = _routes(20, 1, 1, 1, "small")  # 20 of 1 + 2 + 1 = 4
    rc = render([http(("*", big + small))], str(tmp_path), budget=budget)
    check(rc, tmp_path)
    # 3 x 144 + 80 = 512: one big route goes (the last by name among equals).
    assert [str(p.subject) for p in rc.problems] == ["HTTPRoute default/big02"]
    assert "budget of 400 ACLs" in rc.problems[0].reason
    assert "this one: 144 ACLs" in rc.problems[0].reason
    assert "default/big01" in rc.text and "default/small19" in rc.text


def test_servers_are_budgeted_per_backend_and_in_total(tmp_path: Path) -> None:
    def many(name: str, n: int) -> ServiceBackend:
        eps = tuple(Backend(f"10.1.{i // 250}.{i % 250 + 1}", 80, 1) for i in range(n))
        return ServiceBackend(f"default/{name}:80", 1, eps)

    budget = Budget(backend_servers=100, servers=150)
    entries = [
        entry("huge", "/h", backends=BackendSet((many("huge", 101),))),
        entry("a", "/a", backends=BackendSet((many("a", 80),))),
        entry("b", "/b", backends=BackendSet((many("b", 90),))),
        entry("shared", "/s", backends=BackendSet((many("a", 80),))),
    ]
    rc = render([http(("*", entries))], str(tmp_path), budget=budget)
    check(rc, tmp_path)
    problems = {(str(p.subject), p.rule): p.reason for p in rc.problems}
    assert problems.keys() == {("HTTPRoute default/huge", 0), ("HTTPRoute default/b", None)}
    assert (
        "has 101 endpoints; a backend holds at most 100" in problems[("HTTPRoute default/huge", 0)]
    )
    assert "budget of 150 servers" in problems[("HTTPRoute default/b", None)]
    # "a" and "shared" use the same backend: its servers count once.
    assert rc.text.count("\n    server ") == 80


def test_the_rendered_text_is_held_to_the_byte_budget(tmp_path: Path) -> None:
    budget = Budget(bytes=12_000)
    long_value = "v" * 1000
    entries = [
        entry(f"r{i}", f"/p{i}", headers=(MatchRule("Exact", "x", long_value * (1 + i % 3)),))
        for i in range(12)
    ]
    rc = render([http(("*", entries))], str(tmp_path), budget=budget)
    check(rc, tmp_path)
    assert len(rc.text) <= budget.bytes
    assert rc.problems
    assert all("budget of 12000 bytes of configuration" in p.reason for p in rc.problems)
    left_out = {str(p.subject) for p in rc.problems}
    kept = {f"HTTPRoute default/r{i}" for i in range(12)} - left_out
    assert kept and all(f"{route} rule 0" in rc.text for route in kept)
    # The largest go first: every route left out is at least as large as any kept.
    size = {f"HTTPRoute default/r{i}": 1 + i % 3 for i in range(12)}
    assert min(size[r] for r in left_out) >= max(size[r] for r in kept)


def test_the_amplification_attack_renders_within_budget_and_checks_quickly(
    tmp_path: Path,
) -> None:
    """64 HTTPRoutes of 16 rules x 8 matches x 16 headers (valid through the
    Kubernetes API) rendered 9.4 MB with 139k named ACLs, and `haproxy -c`
    ran into its 60 s timeout.  Now: the routes needing most are left out,
    with a reason, and what remains checks in well under a second."""
    attack = _routes(64, 16, 8, 16, "attack")
    good = entry("good", "/good")
    t0 = time.monotonic()
    rc = render([http(("*", [*attack, good]))], str(tmp_path))
    rendered = time.monotonic() - t0
    assert rendered < 5
    left_out = {str(p.subject) for p in rc.problems}
    assert 0 < len(left_out) < 64 and "HTTPRoute default/good" not in left_out
    assert all(f"budget of {DEFAULT_BUDGET.acls} ACLs" in p.reason for p in rc.problems)
    assert len(rc.text) <= DEFAULT_BUDGET.bytes
    t0 = time.monotonic()
    check(rc, tmp_path)
    checked = time.monotonic() - t0
    print(
        f"\nattack: {len(left_out)} of 64 routes left out, {len(rc.text) / 2**20:.1f} MiB, "
        f"render {rendered:.2f} s, haproxy -c {checked:.2f} s"
    )
    assert checked < CHECK_TIMEOUT / 2


# -- CORS ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allowed", "origin", "matches"),
    [
        ("https://www.foo.com", "https://www.foo.com", True),
        ("https://www.foo.com", "HTTPS://WWW.FOO.COM", True),  # -m reg -i
        ("https://www.foo.com", "https://www.foo.com.evil.example", False),
        ("https://www.foo.com", "http://www.foo.com", False),
        ("https://*.bar.com", "https://a.bar.com", True),
        ("https://*.bar.com", "https://x.y.bar.com", True),
        ("https://*.bar.com", "https://bar.com", False),
        ("https://*.bar.com", "https://evil.example/.bar.com", False),
        ("https://*.bar.com", "https://a.bar.com:8443", False),
        ("https://*", "https://anything.example:1234", False),
        ("https://*:1234", "https://anything.example:1234", True),
        ("*", "null", True),
    ],
)
def testcors_origin_patterns(allowed: str, origin: str, matches: bool) -> None:
    pattern = re.compile(f"^(?:{cors_origin_pattern(allowed)})$", re.IGNORECASE)
    assert bool(pattern.match(origin)) is matches


def test_cors_filter_renders_a_preflight_answer_haproxy_accepts(tmp_path: Path) -> None:
    cors = CORSPolicy(("https://*.bar.com",), ("*",), ("x-a", "x-b"), ("x-c",), 60, True)
    rc = render([http(("*", [entry(filters=(RouteFilter("CORS", cors=cors),))]))], str(tmp_path))
    assert rc.problems == ()
    lines = [ln.strip() for ln in rc.text.splitlines()]
    [answer] = [ln for ln in lines if ln.startswith("http-request return status 204")]
    # With credentials, "*" methods echo the one requested (browsers refuse "*").
    assert "hdr access-control-allow-methods '%[req.fhdr(access-control-request-method)]'" in answer
    assert "hdr access-control-allow-headers 'x-a, x-b'" in answer
    assert "{ method -m str -- OPTIONS }" in answer
    check(rc, tmp_path)


def test_tls_terminate_and_passthrough_on_one_port_take_two_frontends(
    cert: TLSCertificate, tmp_path: Path
) -> None:
    tls_t, tls_p = ObjectRef("TLSRoute", "default", "t"), ObjectRef("TLSRoute", "default", "p")
    term = L7Listener("default/gw", "t", (VIP,), 8443, "TLS", "Terminate", "a.example.com",
                      (cert,), tls_routes=(TLSRouteEntry(tls_t, ("a.example.com",),
                                                         BackendSet((svc(),))),))  # fmt: skip
    pass_ = L7Listener("default/gw", "p", (VIP,), 8443, "TLS", "Passthrough", "b.example.com",
                       tls_routes=(TLSRouteEntry(tls_p, ("b.example.com",),
                                                 BackendSet((svc("be2"),))),))  # fmt: skip
    rc = render([term, pass_], str(tmp_path))
    assert rc.problems == ()
    sections = [ln for ln in rc.text.splitlines() if ln.startswith(("frontend", "backend"))]
    public = [s for s in sections if s.startswith("frontend fe_") and not s.endswith("_terminate")]
    assert len(public) == 1 and f"frontend {public[0].split()[1]}_terminate" in sections
    binds = [ln.strip() for ln in rc.text.splitlines() if ln.strip().startswith("bind ")]
    assert f"bind {VIP}:8443" in binds  # the public one does not decrypt
    [inner] = [b for b in binds if "accept-proxy" in b]
    assert inner.startswith(f"bind 'unix@{tmp_path}/{public[0].split()[1]}.sock' accept-proxy ssl")
    check(rc, tmp_path)
