"""Client certificate validation on TLS listeners (Gateway spec.tls.frontend)
through translate and the renderer: which CA bundle each listener checks
clients against, the listener conditions when none is usable, and the
Gateway's InsecureFrontendValidationMode condition.  Handshakes with real
clients: tests/e2e/test_proxy_http.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from test_conformance_manifests import INFRA, TESTS, ca_certificate, load

from agent.proxy.render import render

needs_suite = pytest.mark.skipif(not TESTS.is_dir(), reason=f"{TESTS} is not present")


def _listeners(tr: Any, gateway: str) -> dict[str, dict[str, tuple[str, str]]]:
    obj = tr.status.find("Gateway", INFRA, gateway)
    assert obj is not None
    return {
        ls["name"]: {c["type"]: (c["status"], c["reason"]) for c in ls["conditions"]}
        for ls in obj.to_dict()["status"]["listeners"]
    }


@needs_suite
def test_default_and_per_port_validation_reach_the_listeners(tmp_path: Path) -> None:
    tr = load("gateway-with-clientcertificate-validation", addresses=True)
    mine = [ls for ls in tr.desired.l7 if ls.gateway == f"{INFRA}/client-validation-default"]
    served = {ls.listener: ls for ls in mine}
    for name in ("https", "https-with-hostname"):
        validation = served[name].client_validation
        assert validation is not None and not validation.insecure_fallback
        assert validation.ca_pem.decode().strip() == ca_certificate().strip()
    out = render(mine, str(tmp_path))
    binds = [ln.strip() for ln in out.text.splitlines() if ln.strip().startswith("bind ")]
    verified = [b for b in binds if " verify required ca-file " in b]
    assert len(verified) == 2, binds  # ports 443 and 8443


@needs_suite
def test_unusable_ca_references_refuse_only_their_listener() -> None:
    tr = load("gateway-with-invalid-clientcertificate-validation", addresses=True)
    got = _listeners(tr, "gateway-with-invalid-client-cert-validation")
    assert got["https"]["Accepted"] == ("True", "Accepted")
    assert got["https"]["Programmed"][0] == "True"
    for name, reason in (
        ("https-unresolved", "InvalidCACertificateRef"),
        ("https-invalid-kind", "InvalidCACertificateKind"),
        ("https-grant-missing", "RefNotPermitted"),
    ):
        assert got[name]["ResolvedRefs"] == ("False", reason), name
        assert got[name]["Accepted"] == ("False", "NoValidCACertificate"), name
        assert got[name]["Programmed"][0] == "False", name
    gw = f"{INFRA}/gateway-with-invalid-client-cert-validation"
    served = {ls.listener for ls in tr.desired.l7 if ls.gateway == gw}
    assert "https" in served and not served & {"https-unresolved", "https-invalid-kind"}


@needs_suite
def test_an_invalid_default_leaves_plain_http_listeners_alone() -> None:
    tr = load("gateway-invalid-default-frontend-client-certificate-validation", addresses=True)
    got = _listeners(tr, "invalid-default-client-validation-config")
    assert got["http"]["Accepted"] == ("True", "Accepted")
    https = [n for n in got if n != "http"]
    assert https and all(got[n]["Accepted"] == ("False", "NoValidCACertificate") for n in https)


@needs_suite
def test_insecure_fallback_is_said_on_the_gateway_and_rendered_as_optional(
    tmp_path: Path,
) -> None:
    tr = load("gateway-with-clientcertificate-validation-insecure-fallback", addresses=True)
    obj = tr.status.find("Gateway", INFRA, "client-validation-insecure-fallback")
    assert obj is not None
    conds = {c["type"]: c for c in obj.to_dict()["status"]["conditions"]}
    insecure = conds["InsecureFrontendValidationMode"]
    assert (insecure["status"], insecure["reason"]) == ("True", "ConfigurationChanged")
    out = render(tr.desired.l7, str(tmp_path))
    assert " verify optional ca-file " in out.text
    assert " ca-ignore-err all crt-ignore-err all" in out.text
