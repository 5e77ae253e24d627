"""Small builders for manifest dicts, and lookups into a Translation.

Every builder returns a plain dict shaped like the YAML a user would write, so
the tests go through the same parsing as real input.  Defaults describe the
common case: one GatewayClass of ours, a Gateway "gw" in namespace "default"
with a static VIP, routes in "default" attached to it.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from agent.model.snapshot import Snapshot, build_snapshot
from agent.translate import Translation, translate

CONTROLLER = "gatewaylb.io/agent"
CLASS = "gatewaylb"
NS = "default"
VIP = "192.0.2.10"
GW_GROUP = "gateway.networking.k8s.io"
V1 = f"{GW_GROUP}/v1"

Doc = dict[str, Any]


def _meta(
    name: str,
    namespace: str | None,
    *,
    created: str | None = None,
    generation: int | None = None,
    labels: dict[str, str] | None = None,
) -> Doc:
    meta: Doc = {"name": name}
    if namespace is not None:
        meta["namespace"] = namespace
    if created is not None:
        meta["creationTimestamp"] = created
    if generation is not None:
        meta["generation"] = generation
    if labels is not None:
        meta["labels"] = labels
    return meta


# -- Gateway API objects -------------------------------------------------------------


def gateway_class(
    name: str = CLASS,
    controller: str = CONTROLLER,
    *,
    generation: int | None = None,
    parameters_ref: Doc | None = None,
    api_version: str = V1,
) -> Doc:
    spec: Doc = {"controllerName": controller}
    if parameters_ref is not None:
        spec["parametersRef"] = parameters_ref
    return {
        "apiVersion": api_version,
        "kind": "GatewayClass",
        "metadata": _meta(name, None, generation=generation),
        "spec": spec,
    }


def listener(
    name: str,
    protocol: str,
    port: int,
    *,
    hostname: str | None = None,
    tls_mode: str | None = None,
    certs: Sequence[str | Doc] = (),
    from_: str | None = None,
    selector: Doc | None = None,
    kinds: Sequence[str | Doc] | None = None,
) -> Doc:
    out: Doc = {"name": name, "protocol": protocol, "port": port}
    if hostname is not None:
        out["hostname"] = hostname
    if tls_mode is not None or certs:
        tls: Doc = {}
        if tls_mode is not None:
            tls["mode"] = tls_mode
        if certs:
            tls["certificateRefs"] = [{"name": c} if isinstance(c, str) else c for c in certs]
        out["tls"] = tls
    allowed: Doc = {}
    if from_ is not None:
        ns: Doc = {"from": from_}
        if selector is not None:
            ns["selector"] = selector
        allowed["namespaces"] = ns
    if kinds is not None:
        allowed["kinds"] = [{"kind": k} if isinstance(k, str) else k for k in kinds]
    if allowed:
        out["allowedRoutes"] = allowed
    return out


def tcp(name: str = "tcp", port: int = 5000, **kw: Any) -> Doc:
    return listener(name, "TCP", port, **kw)


def udp(name: str = "udp", port: int = 5000, **kw: Any) -> Doc:
    return listener(name, "UDP", port, **kw)


def http(name: str = "http", port: int = 80, **kw: Any) -> Doc:
    return listener(name, "HTTP", port, **kw)


def https(
    name: str = "https", port: int = 443, certs: Sequence[str | Doc] = ("cert",), **kw: Any
) -> Doc:
    return listener(name, "HTTPS", port, certs=certs, **kw)


def tls_passthrough(name: str = "tls", port: int = 443, **kw: Any) -> Doc:
    return listener(name, "TLS", port, tls_mode="Passthrough", **kw)


def tls_terminate(
    name: str = "tls", port: int = 443, certs: Sequence[str | Doc] = ("cert",), **kw: Any
) -> Doc:
    return listener(name, "TLS", port, tls_mode="Terminate", certs=certs, **kw)


def gateway(
    name: str = "gw",
    *listeners: Doc,
    namespace: str = NS,
    addresses: Sequence[str | Doc] | None = (VIP,),
    class_name: str = CLASS,
    created: str | None = None,
    generation: int | None = None,
    api_version: str = V1,
    spec: Doc | None = None,
) -> Doc:
    body: Doc = {"gatewayClassName": class_name, "listeners": list(listeners) or [tcp()]}
    if addresses is not None:
        body["addresses"] = [
            {"type": "IPAddress", "value": a} if isinstance(a, str) else a for a in addresses
        ]
    body.update(spec or {})
    return {
        "apiVersion": api_version,
        "kind": "Gateway",
        "metadata": _meta(name, namespace, created=created, generation=generation),
        "spec": body,
    }


def listener_set(
    name: str = "ls",
    *listeners: Doc,
    namespace: str = NS,
    gateway: str = "gw",
    gateway_namespace: str | None = None,
    created: str | None = None,
    generation: int | None = None,
) -> Doc:
    ref: Doc = {"name": gateway}
    if gateway_namespace is not None:
        ref["namespace"] = gateway_namespace
    return {
        "apiVersion": V1,
        "kind": "ListenerSet",
        "metadata": _meta(name, namespace, created=created, generation=generation),
        "spec": {"parentRef": ref, "listeners": list(listeners)},
    }


def allow_listener_sets(from_: str = "Same", selector: Doc | None = None) -> Doc:
    """A Gateway spec fragment: spec.allowedListeners."""
    namespaces: Doc = {"from": from_}
    if selector is not None:
        namespaces["selector"] = selector
    return {"allowedListeners": {"namespaces": namespaces}}


def parent(
    name: str = "gw",
    *,
    namespace: str | None = None,
    section: str | None = None,
    port: int | None = None,
    group: str | None = None,
    kind: str | None = None,
) -> Doc:
    out: Doc = {"name": name}
    if namespace is not None:
        out["namespace"] = namespace
    if section is not None:
        out["sectionName"] = section
    if port is not None:
        out["port"] = port
    if group is not None:
        out["group"] = group
    if kind is not None:
        out["kind"] = kind
    return out


def backend(
    name: str = "svc",
    port: int | None = 80,
    *,
    weight: int | None = None,
    namespace: str | None = None,
    kind: str | None = None,
    group: str | None = None,
) -> Doc:
    out: Doc = {"name": name}
    if port is not None:
        out["port"] = port
    if weight is not None:
        out["weight"] = weight
    if namespace is not None:
        out["namespace"] = namespace
    if kind is not None:
        out["kind"] = kind
    if group is not None:
        out["group"] = group
    return out


def _route(
    kind: str,
    name: str,
    *,
    namespace: str,
    parents: Sequence[Doc] | None,
    created: str | None,
    generation: int | None,
    api_version: str,
    spec: Doc,
) -> Doc:
    body: Doc = {"parentRefs": list(parents) if parents is not None else [parent()]}
    body.update(spec)
    return {
        "apiVersion": api_version,
        "kind": kind,
        "metadata": _meta(name, namespace, created=created, generation=generation),
        "spec": body,
    }


def l4route(
    kind: str,
    name: str = "route",
    *backends: Doc,
    namespace: str = NS,
    parents: Sequence[Doc] | None = None,
    rules: Sequence[Doc] | None = None,
    hostnames: Sequence[str] | None = None,
    created: str | None = None,
    generation: int | None = None,
    api_version: str = V1,
) -> Doc:
    spec: Doc = {
        "rules": list(rules)
        if rules is not None
        else [{"backendRefs": list(backends) or [backend()]}]
    }
    if hostnames is not None:
        spec["hostnames"] = list(hostnames)
    return _route(
        kind,
        name,
        namespace=namespace,
        parents=parents,
        created=created,
        generation=generation,
        api_version=api_version,
        spec=spec,
    )


def tcproute(name: str = "route", *backends: Doc, **kw: Any) -> Doc:
    return l4route("TCPRoute", name, *backends, **kw)


def udproute(name: str = "route", *backends: Doc, **kw: Any) -> Doc:
    return l4route("UDPRoute", name, *backends, **kw)


def tlsroute(
    name: str = "route", *backends: Doc, hostnames: Sequence[str] = ("app.example.com",), **kw: Any
) -> Doc:
    return l4route("TLSRoute", name, *backends, hostnames=hostnames, **kw)


def httproute(
    name: str = "route",
    *rules: Doc,
    namespace: str = NS,
    parents: Sequence[Doc] | None = None,
    hostnames: Sequence[str] | None = None,
    created: str | None = None,
    generation: int | None = None,
    api_version: str = V1,
) -> Doc:
    spec: Doc = {"rules": list(rules) or [{"backendRefs": [backend()]}]}
    if hostnames is not None:
        spec["hostnames"] = list(hostnames)
    return _route(
        "HTTPRoute",
        name,
        namespace=namespace,
        parents=parents,
        created=created,
        generation=generation,
        api_version=api_version,
        spec=spec,
    )


def grpcroute(
    name: str = "route",
    *rules: Doc,
    namespace: str = NS,
    parents: Sequence[Doc] | None = None,
    hostnames: Sequence[str] | None = None,
    created: str | None = None,
) -> Doc:
    spec: Doc = {"rules": list(rules) or [{"backendRefs": [backend()]}]}
    if hostnames is not None:
        spec["hostnames"] = list(hostnames)
    return _route(
        "GRPCRoute",
        name,
        namespace=namespace,
        parents=parents,
        created=created,
        generation=None,
        api_version=V1,
        spec=spec,
    )


def rule(*backends: Doc, matches: Sequence[Doc] | None = None, **extra: Any) -> Doc:
    out: Doc = {"backendRefs": list(backends) or [backend()]}
    if matches is not None:
        out["matches"] = list(matches)
    out.update(extra)
    return out


def reference_grant(
    name: str = "grant",
    *,
    namespace: str,
    from_namespace: str,
    from_kind: str = "TCPRoute",
    from_group: str = GW_GROUP,
    to_kind: str = "Service",
    to_group: str = "",
    to_name: str | None = None,
    api_version: str = f"{GW_GROUP}/v1beta1",
) -> Doc:
    to: Doc = {"group": to_group, "kind": to_kind}
    if to_name is not None:
        to["name"] = to_name
    return {
        "apiVersion": api_version,
        "kind": "ReferenceGrant",
        "metadata": _meta(name, namespace),
        "spec": {
            "from": [{"group": from_group, "kind": from_kind, "namespace": from_namespace}],
            "to": [to],
        },
    }


# -- core objects --------------------------------------------------------------------


def namespace(name: str, labels: dict[str, str] | None = None) -> Doc:
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": _meta(name, None, labels=labels)}


def service(
    name: str = "svc",
    *ports: Doc,
    namespace: str = NS,
    type_: str | None = None,
) -> Doc:
    spec: Doc = {"ports": list(ports) or [svc_port(80, 8080)]}
    if type_ is not None:
        spec["type"] = type_
    return {"apiVersion": "v1", "kind": "Service", "metadata": _meta(name, namespace), "spec": spec}


def svc_port(
    port: int,
    target: int | str | None = None,
    *,
    name: str = "",
    protocol: str = "TCP",
) -> Doc:
    out: Doc = {"port": port, "protocol": protocol}
    if name:
        out["name"] = name
    if target is not None:
        out["targetPort"] = target
    return out


def endpoint(
    *ips: str,
    ready: bool | None = None,
    serving: bool | None = None,
    terminating: bool | None = None,
) -> Doc:
    conditions: Doc = {}
    if ready is not None:
        conditions["ready"] = ready
    if serving is not None:
        conditions["serving"] = serving
    if terminating is not None:
        conditions["terminating"] = terminating
    out: Doc = {"addresses": list(ips)}
    if conditions:
        out["conditions"] = conditions
    return out


def endpointslice(
    service_name: str = "svc",
    *endpoints: Doc,
    name: str | None = None,
    namespace: str = NS,
    ports: Sequence[Doc] | None = None,
    address_type: str = "IPv4",
) -> Doc:
    """A slice for `service_name`; ports default to one unnamed TCP port 8080."""
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": _meta(
            name or f"{service_name}-{address_type.lower()}",
            namespace,
            labels={"kubernetes.io/service-name": service_name},
        ),
        "addressType": address_type,
        "endpoints": list(endpoints),
        "ports": list(ports) if ports is not None else [{"port": 8080, "protocol": "TCP"}],
    }


def ips(*addresses: str) -> list[Doc]:
    """One ready endpoint per address."""
    return [endpoint(a) for a in addresses]


def backend_service(
    name: str = "svc",
    *addresses: str,
    namespace: str = NS,
    port: int = 80,
    target: int = 8080,
    protocol: str = "TCP",
) -> list[Doc]:
    """A Service with one port and a slice of ready endpoints on `target`."""
    return [
        service(name, svc_port(port, target, protocol=protocol), namespace=namespace),
        endpointslice(
            name,
            *ips(*addresses),
            namespace=namespace,
            ports=[{"port": target, "protocol": protocol}],
        ),
    ]


# A syntactically valid (PEM armour, base64, ASN.1 SEQUENCE) certificate and key;
# the agent checks structure only, the proxy checks the rest.
CERT_PEM = b"-----BEGIN CERTIFICATE-----\nMAMCAQE=\n-----END CERTIFICATE-----\n"
KEY_PEM = b"-----BEGIN PRIVATE KEY-----\nMAMCAQI=\n-----END PRIVATE KEY-----\n"


def secret(
    name: str = "cert",
    *,
    namespace: str = NS,
    cert: bytes = CERT_PEM,
    key: bytes = KEY_PEM,
) -> Doc:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(name, namespace),
        "type": "kubernetes.io/tls",
        "data": {
            "tls.crt": base64.b64encode(cert).decode(),
            "tls.key": base64.b64encode(key).decode(),
        },
    }


# -- running and reading ---------------------------------------------------------------


def flatten(docs: Iterable[Doc | Sequence[Doc]]) -> list[Doc]:
    out: list[Doc] = []
    for d in docs:
        if isinstance(d, dict):
            out.append(d)
        else:
            out.extend(d)
    return out


def snapshot(*docs: Doc | Sequence[Doc]) -> Snapshot:
    return build_snapshot((d, f"test#{i}") for i, d in enumerate(flatten(docs)))


def run(*docs: Doc | Sequence[Doc], with_class: bool = True) -> Translation:
    """translate() over the documents (plus our GatewayClass unless told not to)."""
    all_docs = flatten(docs)
    if with_class and not any(d.get("kind") == "GatewayClass" for d in all_docs):
        all_docs.insert(0, gateway_class())
    return translate(snapshot(*all_docs), controller_name=CONTROLLER)


def status(tr: Translation, kind: str, name: str, namespace: str = NS) -> Doc:
    obj = tr.status.find(kind, "" if kind == "GatewayClass" else namespace, name)
    assert obj is not None, f"no status for {kind} {namespace}/{name}"
    st: Doc = obj.to_dict()["status"]
    return st


def has_status(tr: Translation, kind: str, name: str, namespace: str = NS) -> bool:
    return tr.status.find(kind, "" if kind == "GatewayClass" else namespace, name) is not None


def cond(conditions: Sequence[Doc], type_: str) -> Doc:
    found = [c for c in conditions if c["type"] == type_]
    assert len(found) == 1, f"expected one {type_} condition in {conditions}"
    return found[0]


def cond_is(conditions: Sequence[Doc], type_: str, status_: bool, reason: str) -> None:
    c = cond(conditions, type_)
    assert (c["status"], c["reason"]) == ("True" if status_ else "False", reason), c


def gw_status(tr: Translation, name: str = "gw", namespace: str = NS) -> Doc:
    return status(tr, "Gateway", name, namespace)


def listener_status(
    tr: Translation, listener_name: str, gw: str = "gw", namespace: str = NS
) -> Doc:
    for ls in gw_status(tr, gw, namespace)["listeners"]:
        if ls["name"] == listener_name:
            out: Doc = ls
            return out
    raise AssertionError(f"no listener {listener_name} in Gateway {namespace}/{gw}")


def kinds(ls: Doc) -> list[str]:
    return [k["kind"] for k in ls["supportedKinds"]]


def parents(tr: Translation, kind: str, name: str, namespace: str = NS) -> list[Doc]:
    out: list[Doc] = status(tr, kind, name, namespace)["parents"]
    return out


def parent_conditions(
    tr: Translation, kind: str, name: str, namespace: str = NS, *, index: int = 0
) -> list[Doc]:
    ps = parents(tr, kind, name, namespace)
    assert len(ps) > index, f"{kind} {namespace}/{name} has {len(ps)} parents"
    out: list[Doc] = ps[index]["conditions"]
    return out


def frontends(tr: Translation) -> list[Doc]:
    out: list[Doc] = tr.desired.to_dict()["l4"]
    return out


def frontend(tr: Translation, port: int, protocol: str = "tcp", vip: str = VIP) -> Doc:
    for f in frontends(tr):
        if (f["vip"], f["protocol"], f["port"]) == (vip, protocol, port):
            return f
    raise AssertionError(f"no frontend {vip} {protocol}/{port} in {frontends(tr)}")


def weights(fe: Doc) -> dict[str, int]:
    """ip:port -> weight of one frontend."""
    return {f"{b['ip']}:{b['port']}": b["weight"] for b in fe.get("backends", [])}


def l7(tr: Translation, listener_name: str) -> Doc:
    for item in tr.desired.to_dict()["l7"]:
        if item["listener"] == listener_name:
            out: Doc = item
            return out
    raise AssertionError(f"no L7 listener {listener_name}")


class FakeSource:
    """A Source (agent/sources/base.py) over a Snapshot the test sets."""

    name = "fake"

    def __init__(self, snap: Snapshot) -> None:
        self.current = snap
        self.changed = asyncio.Event()

    def synced(self) -> bool:
        return True

    def snapshot(self) -> Snapshot:
        return self.current

    def errors(self) -> list[str]:
        return []

    async def wait_for_change(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self.changed.wait(), timeout)
        except TimeoutError:
            return False
        self.changed.clear()
        return True

    def set(self, snap: Snapshot) -> None:
        self.current = snap
        self.changed.set()

    def close(self) -> None:
        pass


def load_script(path: Path, name: str) -> ModuleType:
    """A script of scripts/ (a file name with dashes) imported as module `name`."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(spec.name, module)
    spec.loader.exec_module(module)
    return module
