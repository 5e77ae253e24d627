"""Core Kubernetes kinds the agent reads: Namespace, Service, EndpointSlice,
Secret and ConfigMap.

Only the fields that decide where traffic goes are kept.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import socket
from dataclasses import dataclass

from agent.model.fields import DNS1123_LABEL, FieldError, Fields
from agent.model.meta import ObjectMeta

PROTOCOLS = ("TCP", "UDP", "SCTP")


@dataclass(frozen=True, slots=True)
class Namespace:
    meta: ObjectMeta


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    protocol: str
    port: int
    # None means "same as port"; a string names a container port, which the
    # EndpointSlice controller has already resolved into the slice's ports.
    target_port: int | str | None
    app_protocol: str | None


@dataclass(frozen=True, slots=True)
class Service:
    meta: ObjectMeta
    type: str
    ports: tuple[ServicePort, ...]

    def port(self, number: int) -> ServicePort | None:
        for p in self.ports:
            if p.port == number:
                return p
        return None


@dataclass(frozen=True, slots=True)
class EndpointPort:
    name: str
    protocol: str
    port: int | None
    app_protocol: str | None


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool
    serving: bool
    terminating: bool
    node_name: str | None


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    meta: ObjectMeta
    service_name: str | None
    address_type: str
    endpoints: tuple[Endpoint, ...]
    ports: tuple[EndpointPort, ...]


@dataclass(frozen=True, slots=True)
class Secret:
    meta: ObjectMeta
    type: str
    data: tuple[tuple[str, bytes], ...]

    def get(self, key: str) -> bytes | None:
        for k, v in self.data:
            if k == key:
                return v
        return None


@dataclass(frozen=True, slots=True)
class ConfigMap:
    """Only `ca.crt` is kept: ConfigMaps are read for the CA bundles that
    BackendTLSPolicies name, and the rest (often large, sometimes a private
    key) is dropped as it is parsed."""

    meta: ObjectMeta
    ca_certificate: str | None


CA_CERTIFICATE_KEY = "ca.crt"
SERVICE_NAME_LABEL = "kubernetes.io/service-name"


def parse_namespace(doc: Fields, meta: ObjectMeta) -> Namespace:
    return Namespace(meta=meta)


def parse_service(doc: Fields, meta: ObjectMeta) -> Service:
    spec = doc.opt_obj("spec") or Fields({}, "spec")
    ports = []
    seen: set[tuple[int, str]] = set()
    for p in spec.items("ports"):
        port = ServicePort(
            name=p.string("name", "", max_len=63),
            protocol=p.string("protocol", "TCP", enum=PROTOCOLS),
            port=p.integer("port", minimum=1, maximum=65535),
            target_port=p.int_or_string("targetPort"),
            app_protocol=p.opt_string("appProtocol", max_len=253),
        )
        if (port.port, port.protocol) in seen:
            raise FieldError(p.path, f"duplicate port {port.port}/{port.protocol}")
        seen.add((port.port, port.protocol))
        ports.append(port)
    return Service(
        meta=meta,
        type=spec.string(
            "type",
            "ClusterIP",
            enum=("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"),
        ),
        ports=tuple(ports),
    )


def _check_address(address: str, address_type: str, path: str) -> str:
    if address_type == "IPv4":
        # Fast path for the common case: a canonical dotted quad round-trips.
        try:
            if (
                socket.inet_ntop(socket.AF_INET, socket.inet_pton(socket.AF_INET, address))
                == address
            ):
                return address
        except (OSError, ValueError):  # ValueError: an embedded NUL
            pass
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        raise FieldError(path, f"invalid IP address {address[:64]!r}") from None
    if getattr(ip, "scope_id", None):
        raise FieldError(path, f"{address[:64]!r}: an address with a zone is not supported")
    if (address_type == "IPv4") != (ip.version == 4):
        raise FieldError(path, f"{address} is not an {address_type} address")
    return str(ip)


def parse_endpoint_slice(doc: Fields, meta: ObjectMeta) -> EndpointSlice:
    address_type = doc.string("addressType", enum=("IPv4", "IPv6", "FQDN"))
    endpoints = []
    # Kubernetes' own limits: 1000 endpoints and 100 ports per slice.
    for e in doc.items("endpoints", max_items=1000):
        addresses = e.strings("addresses", min_items=1, max_items=100, max_len=253)
        if address_type != "FQDN":
            at = e.at("addresses")
            addresses = tuple(
                _check_address(a, address_type, f"{at}[{i}]") for i, a in enumerate(addresses)
            )
        cond = e.opt_obj("conditions") or Fields({}, e.at("conditions"))
        # Kubernetes: a nil "ready" means ready; nil serving means same as ready.
        ready = cond.boolean("ready", True)
        endpoints.append(
            Endpoint(
                addresses=addresses,
                ready=ready,
                serving=cond.boolean("serving", ready),
                terminating=cond.boolean("terminating", False),
                node_name=e.opt_string("nodeName", max_len=253),
            )
        )
    ports = tuple(
        EndpointPort(
            name=p.string("name", "", max_len=63),
            protocol=p.string("protocol", "TCP", enum=PROTOCOLS),
            port=p.opt_integer("port", minimum=1, maximum=65535),
            app_protocol=p.opt_string("appProtocol", max_len=253),
        )
        for p in doc.items("ports", max_items=100)
    )
    service_name = dict(meta.labels).get(SERVICE_NAME_LABEL)
    if service_name is not None and not DNS1123_LABEL.fullmatch(service_name):
        raise FieldError(f"metadata.labels.{SERVICE_NAME_LABEL}", "invalid Service name")
    return EndpointSlice(
        meta=meta,
        service_name=service_name,
        address_type=address_type,
        endpoints=tuple(endpoints),
        ports=ports,
    )


def parse_secret(doc: Fields, meta: ObjectMeta) -> Secret:
    values: dict[str, bytes] = {}
    for key, value in doc.string_map("data"):
        try:
            values[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise FieldError(doc.at(f"data.{key}"), "is not valid base64") from None
    for key, value in doc.string_map("stringData"):
        values[key] = value.encode()
    return Secret(
        meta=meta,
        type=doc.string("type", "Opaque", max_len=253),
        data=tuple(sorted(values.items())),
    )


def parse_config_map(doc: Fields, meta: ObjectMeta) -> ConfigMap:
    data = doc.opt_obj("data")
    ca = data.opt_string(CA_CERTIFICATE_KEY, max_len=1 << 20) if data is not None else None
    return ConfigMap(meta=meta, ca_certificate=ca)
