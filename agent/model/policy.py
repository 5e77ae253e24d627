"""BackendTLSPolicy: how the proxy must speak TLS to a Service's endpoints,
with the defaults and validation rules its CRD declares.

Pure: reads only the document it is given.  It never resolves the CA
references or settles conflicts between policies (translate/backendtls.py
does).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from agent.filters import (
    LocalObjectReference,
)
from agent.model.fields import DNS1123_SUBDOMAIN, GROUP_NAME, KIND_NAME, FieldError, Fields
from agent.model.meta import ObjectMeta

# The CRD's patterns: a SAN hostname may be a wildcard; a URI needs a scheme and authority.
SAN_HOSTNAME = re.compile(
    r"^(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
)
SAN_URI = re.compile(r"^(([^:/?#]+):)(//([^/?#]*))([^?#]*)(\?([^#]*))?(#(.*))?")
WELL_KNOWN_CAS = re.compile(
    r"^(System|([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9]))$"
)


@dataclass(frozen=True, slots=True)
class PolicyTargetRef:
    group: str
    kind: str
    name: str
    section_name: str | None


@dataclass(frozen=True, slots=True)
class SubjectAltName:
    type: str  # Hostname | URI
    value: str


@dataclass(frozen=True, slots=True)
class BackendTLSPolicy:
    meta: ObjectMeta
    target_refs: tuple[PolicyTargetRef, ...]
    ca_certificate_refs: tuple[LocalObjectReference, ...]
    well_known_ca_certificates: str | None
    hostname: str
    subject_alt_names: tuple[SubjectAltName, ...]
    options: tuple[tuple[str, str], ...]


def _target_refs(spec: Fields) -> tuple[PolicyTargetRef, ...]:
    refs = []
    for f in spec.items("targetRefs", min_items=1, max_items=16):
        refs.append(
            PolicyTargetRef(
                group=f.string("group", max_len=253, pattern=GROUP_NAME),
                kind=f.string("kind", max_len=63, min_len=1, pattern=KIND_NAME),
                name=f.string("name", max_len=253, min_len=1),
                section_name=f.opt_string("sectionName", max_len=253, pattern=DNS1123_SUBDOMAIN),
            )
        )
    seen: dict[tuple[str, str, str], list[str | None]] = {}
    for ref in refs:
        seen.setdefault((ref.group, ref.kind, ref.name), []).append(ref.section_name)
    for (_, kind, name), sections in seen.items():
        if len(sections) < 2:
            continue
        if None in sections:
            raise spec.error(
                "targetRefs",
                f"sectionName must be specified when targetRefs names {kind} {name} more than once",
            )
        if len(set(sections)) != len(sections):
            raise spec.error(
                "targetRefs", f"sectionName must be unique among the targetRefs to {kind} {name}"
            )
    return tuple(refs)


def _subject_alt_name(f: Fields) -> SubjectAltName:
    kind = f.string("type", enum=("Hostname", "URI"))
    hostname = f.opt_string("hostname", max_len=253, pattern=SAN_HOSTNAME) or None
    uri = f.opt_string("uri", max_len=253, pattern=SAN_URI) or None
    if kind == "Hostname":
        if hostname is None:
            raise f.error("hostname", "must be set when type is Hostname")
        if uri is not None:
            raise f.error("uri", "must not be set when type is Hostname")
        return SubjectAltName(kind, hostname)
    if uri is None:
        raise f.error("uri", "must be set when type is URI")
    if hostname is not None:
        raise f.error("hostname", "must not be set when type is URI")
    return SubjectAltName(kind, uri)


def parse_backend_tls_policy(doc: Fields, meta: ObjectMeta) -> BackendTLSPolicy:
    spec = doc.obj("spec")
    validation = spec.obj("validation")
    ca_refs = tuple(
        LocalObjectReference(
            group=r.string("group", max_len=253, pattern=GROUP_NAME),
            kind=r.string("kind", max_len=63, min_len=1, pattern=KIND_NAME),
            name=r.string("name", max_len=253, min_len=1),
        )
        for r in validation.items("caCertificateRefs", max_items=8)
    )
    well_known = validation.opt_string("wellKnownCACertificates", max_len=253) or None
    if well_known is not None and not WELL_KNOWN_CAS.fullmatch(well_known):
        raise validation.error(
            "wellKnownCACertificates", "must be System or a domain-prefixed name"
        )
    if ca_refs and well_known is not None:
        raise FieldError(
            validation.path, "must not contain both caCertificateRefs and wellKnownCACertificates"
        )
    if not ca_refs and well_known is None:
        raise FieldError(
            validation.path, "must specify either caCertificateRefs or wellKnownCACertificates"
        )
    return BackendTLSPolicy(
        meta=meta,
        target_refs=_target_refs(spec),
        ca_certificate_refs=ca_refs,
        well_known_ca_certificates=well_known,
        hostname=validation.string("hostname", max_len=253, min_len=1, pattern=DNS1123_SUBDOMAIN),
        subject_alt_names=tuple(
            _subject_alt_name(f) for f in validation.items("subjectAltNames", max_items=5)
        ),
        options=spec.string_map("options"),
    )
