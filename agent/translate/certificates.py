"""TLS certificates a Gateway's frontends use: resolved, checked, refused.

Owns the resolution of certificate references to Secrets (kind,
ReferenceGrant, presence, a structural check of the key pair) for a
terminating listener's tls.certificateRefs and the Gateway's
spec.tls.backend.clientCertificateRef, and of spec.tls.frontend to the CA
bundle a listener checks client certificates against.  It writes only the
certificate fields and the unresolved / not-accepted verdicts they cause; it
must never judge protocols, route kinds or ports.
"""

from __future__ import annotations

import base64
import binascii
import re

from agent.model.gateway import FrontendTLS, FrontendValidation, SecretReference
from agent.model.meta import CORE_GROUP, Key
from agent.state import ClientValidation, TLSCertificate
from agent.translate.cabundles import resolve_ca_bundles
from agent.translate.gateways import GatewayState
from agent.translate.index import SnapshotIndex
from agent.translate.listeners import ListenerState
from agent.translate.refs import reference_permitted
from agent.translate.status import (
    R_INVALID_CA_CERTIFICATE_KIND,
    R_INVALID_CERTIFICATE_REF,
    R_INVALID_CLIENT_CERTIFICATE_REF,
    R_NO_VALID_CA_CERTIFICATE,
    R_REF_NOT_PERMITTED,
)

# No \s* before the body: with the lazy body class it made matching quadratic.
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----([A-Za-z0-9+/=\s]+?)-----END \1-----")


def _pem_blocks(data: bytes) -> list[tuple[str, bytes]]:
    out = []
    for match in _PEM_BLOCK.finditer(data):
        try:
            der = base64.b64decode(b"".join(match.group(2).split()), validate=True)
        except (binascii.Error, ValueError):
            return []
        # Every certificate and key in DER is an ASN.1 SEQUENCE.
        if not der or der[0] != 0x30:
            return []
        out.append((match.group(1).decode(), der))
    return out


def check_key_pair(cert: bytes | None, key: bytes | None) -> str | None:
    """Why a tls.crt / tls.key pair is unusable, or None when it looks right.

    A structural check (PEM armour, base64, ASN.1 framing); the proxy's own
    configuration check is the final word on the key matching the certificate.
    """
    if not cert or not key:
        return "must hold tls.crt and tls.key"
    certs = [b for b in _pem_blocks(cert) if b[0] == "CERTIFICATE"]
    keys = [b for b in _pem_blocks(key) if b[0].endswith("PRIVATE KEY")]
    if not certs:
        return "tls.crt holds no PEM certificate"
    if len(keys) != 1:
        return "tls.key must hold exactly one PEM private key"
    return None


def _secret_problem(
    index: SnapshotIndex,
    ref: SecretReference,
    *,
    from_kind: str,
    from_namespace: str,
    where: str,
    bad_ref: str,
) -> tuple[str, str] | TLSCertificate:
    """A certificate reference resolved to its key pair, or (reason, message)."""
    namespace = ref.namespace or from_namespace
    if ref.group != CORE_GROUP or ref.kind != "Secret":
        return (bad_ref, f"{where}: unsupported kind {ref.kind}.{ref.group}")
    if not reference_permitted(
        index,
        from_kind=from_kind,
        from_namespace=from_namespace,
        to_kind="Secret",
        to_namespace=namespace,
        to_name=ref.name,
    ):
        return (
            R_REF_NOT_PERMITTED,
            f"{where}: Secret {namespace}/{ref.name} is in another namespace and no "
            "ReferenceGrant allows it",
        )
    secret = index.secrets.get(Key(namespace, ref.name))
    if secret is None:
        invalid = index.invalid.get(("Secret", Key(namespace, ref.name)))
        found = f"is invalid: {invalid}" if invalid is not None else "not found"
        return (bad_ref, f"{where}: Secret {namespace}/{ref.name} {found}")
    cert, key = secret.get("tls.crt"), secret.get("tls.key")
    problem = check_key_pair(cert, key)
    if problem is not None:
        return (bad_ref, f"{where}: Secret {namespace}/{ref.name} {problem}")
    assert cert is not None and key is not None
    return TLSCertificate(f"{namespace}/{ref.name}", cert, key)


def resolve_client_certificate(state: GatewayState, index: SnapshotIndex) -> None:
    ref = state.gateway.backend_client_certificate
    if ref is None:
        return
    found = _secret_problem(
        index,
        ref,
        from_kind="Gateway",
        from_namespace=state.key.namespace,
        where="spec.tls.backend.clientCertificateRef",
        bad_ref=R_INVALID_CLIENT_CERTIFICATE_REF,
    )
    if isinstance(found, TLSCertificate):
        state.client_certificate = found
    else:
        state.unresolved = found


def resolve_certificates(ls: ListenerState, index: SnapshotIndex) -> None:
    assert ls.listener.tls is not None
    problems: list[tuple[str, str]] = []
    for i, ref in enumerate(ls.listener.tls.certificate_refs):
        found = _secret_problem(
            index,
            ref,
            from_kind=ls.owner_kind,
            from_namespace=ls.owner_namespace,
            where=f"tls.certificateRefs[{i}]",
            bad_ref=R_INVALID_CERTIFICATE_REF,
        )
        if isinstance(found, TLSCertificate):
            ls.certificates.append(found)
        else:
            problems.append(found)
    if problems:
        ls.unresolved = (problems[0][0], "; ".join(m for _, m in problems))


def resolve_client_validation(
    ls: ListenerState, frontend: FrontendTLS, index: SnapshotIndex
) -> None:
    """The CA bundle a terminating listener checks client certificates
    against (spec.tls.frontend, per port or the default)."""
    port = ls.listener.port
    validation: FrontendValidation | None = frontend.for_port(port)
    if validation is None:
        return
    at = (
        f"spec.tls.frontend.perPort[port={port}]"
        if any(p == port for p, _ in frontend.per_port)
        else "spec.tls.frontend.default"
    )
    refs = validation.ca_certificate_refs
    bundles = resolve_ca_bundles(
        index,
        refs,
        where=f"{at}.validation",
        from_kind="Gateway",
        from_namespace=ls.gateway.namespace,
        namespaces=[ref.namespace for ref in refs],
        bad_kind=R_INVALID_CA_CERTIFICATE_KIND,
    )
    if ls.unresolved is None:
        ls.unresolved = bundles.unresolved
    if not bundles.pems:
        ls.not_accepted = (R_NO_VALID_CA_CERTIFICATE, f"{at}: no caCertificateRef is usable")
        return
    insecure = validation.mode == "AllowInsecureFallback"
    ls.client_validation = ClientValidation(bundles.pem, insecure)
