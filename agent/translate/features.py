"""What this agent implements, as Gateway API feature names.

GatewayClass status.supportedFeatures lists exactly these (sorted), so each
feature is added here only when traffic for it really flows end to end.
"""

from __future__ import annotations

SUPPORTED_FEATURES: tuple[str, ...] = tuple(
    sorted(
        {
            "Gateway",
            "GatewayPort8080",
            "GatewayStaticAddresses",
            "ReferenceGrant",
            "TCPRoute",
            "UDPRoute",
        }
    )
)

# Route fields this agent reads but does not implement yet: a rule that uses one
# is dropped and reported (Accepted=False or PartiallyInvalid, UnsupportedValue),
# never silently served differently from what it says.
UNSUPPORTED_FILTERS = frozenset({"ExtensionRef", "ExternalAuth", "CORS"})
