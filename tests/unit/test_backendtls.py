"""BackendTLSPolicy through translate: conflicts, CA references, what gatewaylb
refuses to pretend to verify, each policy's status under the Gateways that use
it, and the TLS settings that reach the proxy's backends.

The first half replays the upstream conformance manifests (v1.6.1,
tests/backendtlspolicy*.yaml) with the CA ConfigMaps the suite creates at
setup; the second covers what the suite does not.  Traffic through a real
HAProxy to a TLS backend: tests/e2e/test_proxy_http.py.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    CONTROLLER,
    backend,
    backend_service,
    gateway,
    http,
    httproute,
    rule,
    run,
    secret,
    status,
)
from test_conformance_manifests import (
    INFRA,
    TESTS,
    _assign_addresses,
    _documents,
    ca_certificate,
)

from agent.model.snapshot import build_snapshot
from agent.proxy.render import render
from agent.state import BackendTLS
from agent.translate import Translation, translate
from agent.translate.cabundles import ca_problem
from agent.translate.rejections import rejections

Doc = dict[str, Any]
POLICY = "BackendTLSPolicy"
GATEWAY = "same-namespace"

needs_suite = pytest.mark.skipif(not TESTS.is_dir(), reason=f"{TESTS} is not present")


@pytest.fixture(scope="module")
def ca_pem() -> str:
    """A real CA certificate: the one in the CA ConfigMaps the suite creates."""
    return ca_certificate()


def config_map(name: str, ca: str | None, namespace: str = INFRA, **extra: str) -> Doc:
    data = {"ca.crt": ca} if ca is not None else {}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": {**data, **extra},
    }


def load(test_file: str, ca: str) -> Translation:
    """The manifests with the suite's Secrets and CA ConfigMaps (whose CA is `ca`)."""
    assert ca == ca_certificate()
    docs = copy.deepcopy(list(_documents(test_file)))
    _assign_addresses(docs)
    snap = build_snapshot((d, f"{test_file}#{i}") for i, d in enumerate(docs))
    return translate(snap, controller_name=CONTROLLER)


def policy_conds(
    tr: Translation, name: str, ancestor: str = GATEWAY
) -> dict[str, tuple[bool, str]]:
    st = status(tr, POLICY, name, INFRA)
    mine = [a for a in st["ancestors"] if a["ancestorRef"]["name"] == ancestor]
    assert len(mine) == 1, st["ancestors"]
    ref = mine[0]["ancestorRef"]
    assert (ref["group"], ref["kind"], ref["namespace"]) == (
        "gateway.networking.k8s.io", "Gateway", INFRA,
    )  # fmt: skip
    assert mine[0]["controllerName"] == CONTROLLER
    return {c["type"]: (c["status"] == "True", c["reason"]) for c in mine[0]["conditions"]}


def backend_tls(tr: Translation, service: str, port: int) -> tuple[BackendTLS | None, bool]:
    """(the TLS the proxy uses for Service port, whether it is served at all)."""
    name = f"{INFRA}/{service}:{port}"
    found: list[tuple[BackendTLS | None, bool]] = []
    for listener in tr.desired.l7:
        for vh in listener.virtual_hosts:
            for e in vh.routes:
                for svc in e.backends.services:
                    if svc.name == name:
                        found.append((svc.tls, True))
    if found:
        assert len(set(found)) == 1, found
        return found[0]
    return None, False


# -- the upstream conformance manifests -------------------------------------------------------


@needs_suite
def test_valid_policies_are_accepted_and_reach_the_proxy(ca_pem: str) -> None:
    tr = load("backendtlspolicy", ca_pem)
    for name in ("normative-test", "host-mismatch", "cert-mismatch", "reconcile-test"):
        got = policy_conds(tr, name)
        assert got["Accepted"] == (True, "Accepted"), name
        assert got["ResolvedRefs"] == (True, "ResolvedRefs"), name
    tls, served = backend_tls(tr, "backendtlspolicy-test", 443)
    assert served and tls is not None
    assert (tls.policy, tls.hostname) == (f"{INFRA}/normative-test", "abc.example.com")
    assert tls.ca_pem is not None and tls.ca_pem.decode().strip() == ca_pem.strip()
    mismatch, _ = backend_tls(tr, "backendtlspolicy-host-mismatch-test", 443)
    assert mismatch is not None and mismatch.hostname == "mismatch.example.com"
    # The HTTPS listener's route re-encrypts with the same policy.
    route = status(tr, "HTTPRoute", "backendtlspolicy-reencrypt", INFRA)
    assert all(c["status"] == "True" for p in route["parents"] for c in p["conditions"])


@needs_suite
def test_the_oldest_policy_holds_a_target_and_a_port_policy_beats_a_service_one(
    ca_pem: str,
) -> None:
    tr = load("backendtlspolicy-conflict-resolution", ca_pem)
    for first, second in (
        ("conflicted-without-section-name-1", "conflicted-without-section-name-2"),
        ("conflicted-with-section-name-1", "conflicted-with-section-name-2"),
    ):
        assert policy_conds(tr, first)["Accepted"] == (True, "Accepted")
        assert policy_conds(tr, second)["Accepted"] == (False, "Conflicted")
    for name in ("not-conflicted-with-section-name", "not-conflicted-without-section-name"):
        assert policy_conds(tr, name)["Accepted"] == (True, "Accepted")
    port_443, _ = backend_tls(tr, "backendtlspolicy-not-conflicted-test", 443)
    port_8443, _ = backend_tls(tr, "backendtlspolicy-not-conflicted-test", 8443)
    assert port_443 is not None and port_443.policy.endswith("/not-conflicted-with-section-name")
    assert port_8443 is not None
    assert port_8443.policy.endswith("/not-conflicted-without-section-name")
    winner, _ = backend_tls(tr, "backendtlspolicy-conflicted-without-section-name-test", 443)
    assert winner is not None and winner.hostname == "other.example.com"


@needs_suite
@pytest.mark.parametrize(
    ("test_file", "policy", "resolved_reason"),
    [
        ("backendtlspolicy-invalid-ca-certificate-ref", "nonexistent-ca-certificate-ref",
         "InvalidCACertificateRef"),
        ("backendtlspolicy-invalid-ca-certificate-ref", "malformed-ca-certificate-ref",
         "InvalidCACertificateRef"),
        ("backendtlspolicy-invalid-kind", "invalid-kind", "InvalidKind"),
    ],
)  # fmt: skip
def test_a_policy_without_a_usable_ca_is_refused_and_its_backend_is_not_reached(
    ca_pem: str, test_file: str, policy: str, resolved_reason: str
) -> None:
    tr = load(test_file, ca_pem)
    got = policy_conds(tr, policy)
    assert got["Accepted"] == (False, "NoValidCACertificate")
    assert got["ResolvedRefs"] == (False, resolved_reason)
    # The route stays accepted; the policy's backend is an invalid share (HTTP 500).
    route = next(o for o in tr.status.objects if o.kind == "HTTPRoute")
    assert all(
        c["status"] == "True" for p in route.to_dict()["status"]["parents"]
        for c in p["conditions"] if c["type"] == "Accepted"
    )  # fmt: skip
    service = f"backendtlspolicy-{policy}-test"
    if test_file.endswith("invalid-kind"):
        service = "backendtlspolicy-invalid-kind-test"
    _, served = backend_tls(tr, service, 443)
    assert not served
    invalid = [e.backends.invalid_weight for ls in tr.desired.l7 for vh in ls.virtual_hosts
               for e in vh.routes if e.match.path.endswith(policy)]  # fmt: skip
    assert invalid and all(w > 0 for w in invalid)


@needs_suite
def test_subject_alt_names_other_than_the_hostname_are_refused_not_ignored(ca_pem: str) -> None:
    tr = load("backendtlspolicy-san", ca_pem)
    for name in ("san-dns", "san-dns-mismatch", "san-uri", "san-uri-mismatch",
                 "multiple-sans", "multiple-mismatch-sans"):  # fmt: skip
        got = policy_conds(tr, name)
        if name == "san-dns":  # its one SAN is its hostname: verified as such
            assert got["Accepted"] == (True, "Accepted")
            continue
        assert got["Accepted"] == (False, "Invalid"), name
    _, served = backend_tls(tr, "backendtlspolicy-san-uri-test", 443)
    assert not served


@needs_suite
def test_policy_conditions_follow_its_generation(ca_pem: str) -> None:
    docs = copy.deepcopy(list(_documents("backendtlspolicy-observed-generation-bump")))
    for d in docs:
        if d.get("kind") == POLICY:
            d["metadata"]["generation"] = 7
    _assign_addresses(docs)
    tr = translate(build_snapshot((d, "m") for d in docs), controller_name=CONTROLLER)
    st = status(tr, POLICY, "observed-generation-bump", INFRA)
    gens = {c["observedGeneration"] for a in st["ancestors"] for c in a["conditions"]}
    assert gens == {7}


# -- beyond the suite ----------------------------------------------------------------------


def _policy(name: str, service: str, *, hostname: str = "app.internal", ca: str = "ca",
            section: str | None = None, created: str | None = None,
            **validation: Any) -> Doc:  # fmt: skip
    target: Doc = {"group": "", "kind": "Service", "name": service}
    if section is not None:
        target["sectionName"] = section
    meta: Doc = {"name": name, "namespace": "default"}
    if created is not None:
        meta["creationTimestamp"] = created
    refs = [{"group": "", "kind": "ConfigMap", "name": ca}]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": POLICY,
        "metadata": meta,
        "spec": {"targetRefs": [target],
                 "validation": {"caCertificateRefs": refs, "hostname": hostname, **validation}},
    }  # fmt: skip


def _site(*extra: Doc) -> Translation:
    return run(
        gateway("gw", http("web", 80)),
        httproute("r", rule(backend("svc"))),
        backend_service("svc", "10.1.0.5"),
        *extra,
    )


def test_no_status_for_a_policy_no_gateway_of_ours_uses(ca_pem: str) -> None:
    tr = _site(_policy("p", "unused"), config_map("ca", ca_pem, namespace="default"))
    assert tr.status.find(POLICY, "default", "p") is None


def test_a_policy_names_every_gateway_whose_routes_use_its_service(ca_pem: str) -> None:
    tr = run(
        gateway("a", http("web", 80)),
        gateway("b", http("web", 80), addresses=["192.0.2.11"]),
        httproute("ra", rule(backend("svc")), parents=[{"name": "a"}]),
        httproute("rb", rule(backend("svc")), parents=[{"name": "b"}]),
        backend_service("svc", "10.1.0.5"),
        _policy("p", "svc"),
        config_map("ca", ca_pem, namespace="default"),
    )
    ancestors = status(tr, POLICY, "p")["ancestors"]
    assert [a["ancestorRef"]["name"] for a in ancestors] == ["a", "b"]


def test_a_secret_or_bad_pem_is_not_a_ca(ca_pem: str) -> None:
    assert ca_problem(ca_pem) is None
    assert ca_problem("hello") == "holds no PEM certificate"
    broken = "-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n"
    assert ca_problem(broken) is not None
    tr = _site(
        _policy("p", "svc", ca="secret-ca") | {},
        config_map("ca", ca_pem, namespace="default"),
    )
    policy = tr.status.find(POLICY, "default", "p")
    assert policy is not None
    conds = policy.to_dict()["status"]["ancestors"][0]["conditions"]
    assert [(c["type"], c["reason"]) for c in conds] == [
        ("Accepted", "NoValidCACertificate"), ("ResolvedRefs", "InvalidCACertificateRef"),
    ]  # fmt: skip
    assert "secret-ca not found" in conds[1]["message"]


def test_one_usable_ca_of_two_is_enough_but_says_which_failed(ca_pem: str) -> None:
    doc = _policy("p", "svc")
    doc["spec"]["validation"]["caCertificateRefs"].append(
        {"group": "", "kind": "Secret", "name": "other"}
    )
    tr = _site(doc, config_map("ca", ca_pem, namespace="default"))
    conds = status(tr, POLICY, "p")["ancestors"][0]["conditions"]
    assert [(c["type"], c["status"], c["reason"]) for c in conds] == [
        ("Accepted", "True", "Accepted"), ("ResolvedRefs", "False", "InvalidKind"),
    ]  # fmt: skip
    svc = tr.desired.l7[0].virtual_hosts[0].routes[0].backends.services[0]
    assert svc.tls is not None and svc.tls.hostname == "app.internal"


def test_well_known_system_cas_and_unsupported_options(ca_pem: str) -> None:
    system = _policy("p", "svc")
    del system["spec"]["validation"]["caCertificateRefs"]
    system["spec"]["validation"]["wellKnownCACertificates"] = "System"
    tr = _site(system)
    svc = tr.desired.l7[0].virtual_hosts[0].routes[0].backends.services[0]
    assert svc.tls is not None and svc.tls.ca_pem is None
    with_options = _policy("q", "svc")
    with_options["spec"]["options"] = {"example.com/cipher": "fast"}
    tr = _site(with_options, config_map("ca", ca_pem, namespace="default"))
    accepted = status(tr, POLICY, "q")["ancestors"][0]["conditions"][0]
    assert (accepted["status"], accepted["reason"]) == ("False", "Invalid")
    assert "example.com/cipher" in accepted["message"]


def test_a_malformed_policy_is_rejected_with_its_field() -> None:
    both = _policy("p", "svc")
    both["spec"]["validation"]["wellKnownCACertificates"] = "System"
    tr = _site(both)
    [invalid] = [i for i in build_snapshot([(both, "m.yaml:1")]).invalid]
    assert "must not contain both caCertificateRefs and wellKnownCACertificates" in invalid.error
    assert tr.status.find(POLICY, "default", "p") is None


def test_refused_policies_reach_the_log_lines(ca_pem: str) -> None:
    docs = [_policy("p", "svc", ca="missing")]
    tr = _site(*docs)
    snap = build_snapshot((d, f"m.yaml:{i}") for i, d in enumerate(docs))
    lines = [str(r) for r in rejections(snap, tr.status)]
    assert any(
        line.startswith("BackendTLSPolicy default/p") and "ancestor default/gw" in line
        and "NoValidCACertificate" in line for line in lines
    ), lines  # fmt: skip


def test_the_proxy_verifies_the_backend_with_the_policy(ca_pem: str, tmp_path: Path) -> None:
    tr = _site(_policy("p", "svc"), config_map("ca", ca_pem, namespace="default"))
    out = render(tr.desired.l7, str(tmp_path))
    server = next(ln.strip() for ln in out.text.splitlines() if ln.strip().startswith("server "))
    assert "ssl verify required ca-file " in server
    assert "sni str(app.internal) verifyhost app.internal" in server
    ca_file = server.split("ca-file ", 1)[1].split()[0].strip("'")
    relative = ca_file.removeprefix(str(tmp_path) + "/")
    assert out.files[relative].decode().strip() == ca_pem.strip()


# -- the Gateway's client certificate for backends ----------------------------------------------


@needs_suite
def test_the_gateway_presents_its_client_certificate_to_tls_backends(ca_pem: str) -> None:
    docs = copy.deepcopy(list(_documents("gateway-tls-backend-client-certificate")))
    docs.append(secret("tls-checks-client-certificate", namespace=INFRA))
    _assign_addresses(docs)
    tr = translate(build_snapshot((d, "m") for d in docs), controller_name=CONTROLLER)
    gw = status(tr, "Gateway", "gateway-tls-backend-client-certificate", INFRA)
    conds = {c["type"]: (c["status"], c["reason"]) for c in gw["conditions"]}
    assert conds["ResolvedRefs"] == ("True", "ResolvedRefs")
    assert conds["Accepted"] == ("True", "Accepted")
    tls, served = backend_tls(tr, "tls-backend-with-client-cert-validation", 443)
    assert served and tls is not None and tls.client_certificate is not None
    assert tls.client_certificate.secret == f"{INFRA}/tls-checks-client-certificate"


@needs_suite
@pytest.mark.parametrize(
    ("gateway", "reason"),
    [
        ("gateway-client-certificate-nonexistent-secret", "InvalidClientCertificateRef"),
        ("gateway-client-certificate-unsupported-group", "InvalidClientCertificateRef"),
        ("gateway-client-certificate-unsupported-kind", "InvalidClientCertificateRef"),
        ("gateway-client-certificate-malformed-secret", "InvalidClientCertificateRef"),
        ("gateway-client-certificate-missing-reference-grant", "RefNotPermitted"),
    ],
)
def test_an_unusable_client_certificate_is_said_on_the_gateway(gateway: str, reason: str) -> None:
    docs = copy.deepcopy(list(_documents("gateway-invalid-tls-backend-configuration")))
    _assign_addresses(docs)
    tr = translate(build_snapshot((d, "m") for d in docs), controller_name=CONTROLLER)
    gw = status(tr, "Gateway", gateway, INFRA)
    conds = {c["type"]: (c["status"], c["reason"]) for c in gw["conditions"]}
    assert conds["ResolvedRefs"] == ("False", reason)
    assert conds["Accepted"] == ("True", "Accepted")
    assert conds["Programmed"] == ("True", "Programmed")


def test_the_client_certificate_goes_only_to_backends_reached_over_tls(
    ca_pem: str, tmp_path: Path
) -> None:
    gw = gateway("gw", http("web", 80), spec={
        "tls": {"backend": {"clientCertificateRef": {"name": "client"}}}})  # fmt: skip
    tr = run(
        gw,
        httproute("r", rule(backend("svc")), rule(backend("plain"),
                  matches=[{"path": {"type": "PathPrefix", "value": "/plain"}}])),
        backend_service("svc", "10.1.0.5"),
        backend_service("plain", "10.1.0.6"),
        _policy("p", "svc"),
        config_map("ca", ca_pem, namespace="default"),
        secret("client"),
    )  # fmt: skip
    services = {
        svc.name: svc.tls
        for vh in tr.desired.l7[0].virtual_hosts
        for e in vh.routes
        for svc in e.backends.services
    }
    tls = services["default/svc:80"]
    assert tls is not None and tls.client_certificate is not None
    assert services["default/plain:80"] is None
    out = render(tr.desired.l7, str(tmp_path))
    [server] = [ln for ln in out.text.splitlines() if "10.1.0.5" in ln]
    assert " crt " in server
    [plain] = [ln for ln in out.text.splitlines() if "10.1.0.6" in ln]
    assert " ssl " not in plain and " crt " not in plain
