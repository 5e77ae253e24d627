"""BackendTLSPolicy: which Service ports the proxy must reach over TLS, with
which CA and which name to verify, and each policy's status.

A policy targets Services (whole, or one port by its name as `sectionName`)
in its own namespace.  Two policies on the same target conflict: the oldest
(ties by name) holds it, the others read Accepted=False/Conflicted.  A port
named by a policy's sectionName takes that policy over one for the whole
Service.

A target held by a policy that cannot be honoured (no usable CA certificate, a
subject-alternative-name check HAProxy 2.6 cannot make) is not reached in
clear text instead: its share of a route's traffic answers 500, as an invalid
backend's does.

The status of a policy is written for each of our Gateways with a route whose
backendRefs reach a Service it targets (its "ancestors").

Pure, as all of translate: it judges the policies and hands the proxy a
BackendTLS per Service port.  It never checks a CA bundle itself
(cabundles.py does) and never renders proxy configuration.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from agent.model.meta import CORE_GROUP, GATEWAY_GROUP, Key, age_order
from agent.model.policy import BackendTLSPolicy
from agent.state import BackendTLS
from agent.translate.cabundles import resolve_ca_bundles
from agent.translate.index import SnapshotIndex
from agent.translate.status import (
    ACCEPTED,
    R_ACCEPTED,
    R_CONFLICTED,
    R_INVALID,
    R_INVALID_KIND,
    R_NO_VALID_CA_CERTIFICATE,
    R_RESOLVED_REFS,
    RESOLVED_REFS,
    Condition,
    PolicyAncestorStatus,
    PolicyStatus,
)

# A policy's targets: (Service, port name), None for the whole Service.
Target = tuple[Key, str | None]


@dataclass
class PolicyVerdict:
    policy: BackendTLSPolicy
    # (reason, message) when not accepted; ResolvedRefs likewise.
    not_accepted: tuple[str, str] | None = None
    unresolved: tuple[str, str] | None = None
    tls: BackendTLS | None = None  # what the proxy uses, once accepted
    ancestors: set[Key] = field(default_factory=set)  # our Gateways

    @property
    def accepted(self) -> bool:
        return self.not_accepted is None

    def status(self, controller_name: str) -> PolicyStatus:
        gen = self.policy.meta.generation
        if self.not_accepted is None:
            accepted = Condition(ACCEPTED, True, R_ACCEPTED, "Policy is accepted", gen)
        else:
            accepted = Condition(ACCEPTED, False, *self.not_accepted, gen)
        if self.unresolved is None:
            resolved = Condition(
                RESOLVED_REFS, True, R_RESOLVED_REFS, "All references resolved", gen
            )
        else:
            resolved = Condition(RESOLVED_REFS, False, *self.unresolved, gen)
        return PolicyStatus(
            tuple(
                PolicyAncestorStatus(GATEWAY_GROUP, "Gateway", key.namespace, key.name,
                                     controller_name, (accepted, resolved))
                for key in sorted(self.ancestors)[:16]
            )
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class TargetTLS:
    """What a Service port's backends must be reached with: `tls`, or, when
    its policy cannot be honoured, `refused` (why)."""

    policy: Key
    tls: BackendTLS | None
    refused: str | None


class BackendTLSPolicies:
    def __init__(self, policies: Iterable[BackendTLSPolicy], index: SnapshotIndex) -> None:
        self.verdicts: dict[Key, PolicyVerdict] = {}
        self._holders: dict[Target, PolicyVerdict] = {}
        self._by_service: dict[Key, list[PolicyVerdict]] = {}
        for policy in sorted(policies, key=lambda p: age_order(p.meta)):
            verdict = PolicyVerdict(policy)
            self.verdicts[policy.meta.key] = verdict
            targets = _targets(policy)
            for service, _ in targets:
                self._by_service.setdefault(service, []).append(verdict)
            held = [self._holders[t] for t in targets if t in self._holders]
            if held:
                verdict.not_accepted = (
                    R_CONFLICTED,
                    f"BackendTLSPolicy {held[0].policy.meta.key} already targets "
                    f"{_describe(targets)}",
                )
                continue
            for target in targets:
                self._holders[target] = verdict
            _validate(verdict, index)

    def for_port(self, service: Key, port_name: str) -> TargetTLS | None:
        verdict = self._holders.get((service, port_name)) or self._holders.get((service, None))
        if verdict is None:
            return None
        key = verdict.policy.meta.key
        if verdict.not_accepted is not None:
            return TargetTLS(key, None, f"BackendTLSPolicy {key}: {verdict.not_accepted[1]}")
        return TargetTLS(key, verdict.tls, None)

    def used_by(self, service: Key, gateway: Key) -> None:
        """A route of `gateway` reaches `service`: every policy on it reports there."""
        for verdict in self._by_service.get(service, ()):
            verdict.ancestors.add(gateway)


def _targets(policy: BackendTLSPolicy) -> list[Target]:
    return [
        (Key(policy.meta.namespace, ref.name), ref.section_name)
        for ref in policy.target_refs
        if (ref.group, ref.kind) == (CORE_GROUP, "Service")
    ]


def _describe(targets: list[Target]) -> str:
    return ", ".join(
        f"Service {service} port {port}" if port else f"Service {service}"
        for service, port in targets
    )


def _validate(verdict: PolicyVerdict, index: SnapshotIndex) -> None:
    policy = verdict.policy
    bundles = resolve_ca_bundles(
        index,
        policy.ca_certificate_refs,
        where="spec.validation",
        from_kind="BackendTLSPolicy",
        from_namespace=policy.meta.namespace,
        bad_kind=R_INVALID_KIND,
    )
    verdict.unresolved = bundles.unresolved
    well_known = policy.well_known_ca_certificates
    if policy.ca_certificate_refs and not bundles.pems:
        verdict.not_accepted = (R_NO_VALID_CA_CERTIFICATE, "no caCertificateRef is usable")
        return
    if well_known is not None and well_known != "System":
        verdict.not_accepted = (
            R_INVALID,
            f"spec.validation.wellKnownCACertificates {well_known!r} is not supported (System is)",
        )
        return
    if policy.options:
        names = ", ".join(k for k, _ in policy.options)
        verdict.not_accepted = (R_INVALID, f"spec.options {names}: no option is supported")
        return
    sans = policy.subject_alt_names
    # HAProxy 2.6 checks the certificate against the one name it sends as SNI:
    # subjectAltNames other than that very hostname cannot be verified.
    if any((san.type, san.value) != ("Hostname", policy.hostname) for san in sans):
        verdict.not_accepted = (
            R_INVALID,
            "spec.validation.subjectAltNames: only the hostname itself can be verified "
            "(HAProxy 2.6 checks the certificate against the SNI it sends)",
        )
        return
    ca = bundles.pem if bundles.pems else None
    verdict.tls = BackendTLS(str(policy.meta.key), policy.hostname, ca)
