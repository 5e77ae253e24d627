"""CA bundles named by reference: the ConfigMaps (`ca.crt`) that a
BackendTLSPolicy trusts for backends and a Gateway's spec.tls.frontend
trusts for clients.  Each reference resolves to a PEM bundle the TLS library
can load, or to the reason it cannot, with the spec's reasons.

Reads only the Snapshot index: never a file or the system's trust store (its
one check loads a bundle into a throwaway TLS context, cached by content).
It never decides whether a policy or a listener is accepted; its callers do.
"""

from __future__ import annotations

import functools
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from agent.model.meta import CORE_GROUP, Key
from agent.translate.index import SnapshotIndex
from agent.translate.refs import reference_permitted
from agent.translate.status import R_INVALID_CA_CERTIFICATE_REF, R_REF_NOT_PERMITTED


class CAReference(Protocol):
    @property
    def group(self) -> str: ...
    @property
    def kind(self) -> str: ...
    @property
    def name(self) -> str: ...


@dataclass
class Bundles:
    pems: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)  # (reason, message)

    @property
    def unresolved(self) -> tuple[str, str] | None:
        """The ResolvedRefs=False (reason, message), or None when all resolved."""
        if not self.problems:
            return None
        return (self.problems[0][0], "; ".join(m for _, m in self.problems)[:1024])

    @property
    def pem(self) -> bytes:
        return "".join(self.pems).encode()


@functools.lru_cache(maxsize=256)
def ca_problem(pem: str) -> str | None:
    """Why `pem` is no CA bundle the TLS library can load, or None.  Cached:
    every sync asks again of the same few bundles, for every listener and
    policy that names one, and each answer costs a TLS context."""
    if "-----BEGIN CERTIFICATE-----" not in pem:
        return "holds no PEM certificate"
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cadata=pem)
    except (ssl.SSLError, ValueError) as exc:
        return f"cannot be loaded: {exc}"[:200]
    return None


def resolve_ca_bundles(
    index: SnapshotIndex,
    refs: Sequence[CAReference],
    *,
    where: str,
    from_kind: str,
    from_namespace: str,
    namespaces: Sequence[str | None] = (),
    bad_kind: str,
) -> Bundles:
    """`refs` (at `where`.caCertificateRefs) from an object of `from_kind` in
    `from_namespace`; `namespaces[i]` is ref i's own namespace when it may
    name one (a ReferenceGrant then decides), `bad_kind` the reason for a
    kind other than ConfigMap."""
    out = Bundles()
    for i, ref in enumerate(refs):
        at = f"{where}.caCertificateRefs[{i}]"
        if (ref.group, ref.kind) != (CORE_GROUP, "ConfigMap"):
            kind = f"{ref.kind}.{ref.group}" if ref.group else ref.kind
            out.problems.append((bad_kind, f"{at}: unsupported kind {kind} (only ConfigMap)"))
            continue
        namespace = (namespaces[i] if i < len(namespaces) else None) or from_namespace
        what = f"{at}: ConfigMap {namespace}/{ref.name}"
        if not reference_permitted(
            index,
            from_kind=from_kind,
            from_namespace=from_namespace,
            to_kind="ConfigMap",
            to_namespace=namespace,
            to_name=ref.name,
        ):
            out.problems.append(
                (
                    R_REF_NOT_PERMITTED,
                    f"{what} is in another namespace and no ReferenceGrant allows it",
                )
            )
            continue
        config_map = index.config_maps.get(Key(namespace, ref.name))
        pem = config_map.ca_certificate if config_map is not None else None
        if config_map is None:
            problem: str | None = "not found"
        else:
            problem = "has no ca.crt" if not pem else ca_problem(pem or "")
        if problem is not None or pem is None:
            out.problems.append((R_INVALID_CA_CERTIFICATE_REF, f"{what} {problem}"))
            continue
        out.pems.append(pem.strip() + "\n")
    return out
