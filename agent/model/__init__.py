"""The typed, immutable objects the agent reads (Gateway API kinds, Services,
EndpointSlices, Namespaces, Secrets, ConfigMaps, GatewayLBConfig) and their
parsing, which fills in CRD defaults and enforces the CRDs' rules, naming the
field of anything refused.  `snapshot.py` gathers them into a Snapshot.  Pure:
never reads a file or the API server itself (agent/sources and agent/kube
hand it documents)."""
