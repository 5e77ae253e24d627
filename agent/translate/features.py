"""What this agent implements, as Gateway API feature names.

GatewayClass status.supportedFeatures lists exactly these (sorted), so each
feature is added here only when traffic for it really flows end to end: the
upstream conformance suite reads this list and runs every test of every
feature in it (`make conformance`, in CI), so a feature is listed only when
all of its tests pass.
"""

from __future__ import annotations

SUPPORTED_FEATURES: tuple[str, ...] = tuple(
    sorted(
        {
            "BackendTLSPolicy",
            "Gateway",
            "GatewayAddressEmpty",
            "GatewayBackendClientCertificate",
            "GatewayFrontendClientCertificateValidation",
            "GatewayFrontendClientCertificateValidationInsecureFallback",
            "GatewayHTTPListenerIsolation",
            "GatewayHTTPSListenerDetectMisdirectedRequests",
            "GatewayPort8080",
            "GatewayStaticAddresses",
            "ListenerSet",
            "ReferenceGrant",
            "TCPRoute",
            "UDPRoute",
            # L7, through the HAProxy worker (tests/e2e/test_proxy_http.py).
            "GRPCRoute",
            "GRPCRouteNamedRouteRule",
            "HTTPRoute",
            "HTTPRoute303RedirectStatusCode",
            "HTTPRoute307RedirectStatusCode",
            "HTTPRoute308RedirectStatusCode",
            "HTTPRouteBackendProtocolH2C",
            "HTTPRouteBackendProtocolWebSocket",
            "HTTPRouteDestinationPortMatching",
            "HTTPRouteNamedRouteRule",
            "HTTPRouteParentRefPort",
            "HTTPRouteBackendRequestHeaderModification",
            "HTTPRouteBackendTimeout",
            "HTTPRouteCORS",
            "HTTPRouteHostRewrite",
            "HTTPRouteMethodMatching",
            "HTTPRoutePathRedirect",
            "HTTPRoutePathRewrite",
            "HTTPRoutePortRedirect",
            "HTTPRouteQueryParamMatching",
            "HTTPRouteRequestTimeout",
            "HTTPRouteResponseHeaderModification",
            "HTTPRouteRetry",
            "HTTPRouteSchemeRedirect",
            "TLSRoute",
            "TLSRouteModeMixed",
            "TLSRouteModeTerminate",
        }
    )
)

# Route fields this agent reads but does not implement yet: a rule that uses one
# is dropped and reported (Accepted=False or PartiallyInvalid, UnsupportedValue),
# never silently served differently from what it says.
# RequestMirror: HAProxy 2.6 has no native request mirroring (only SPOE-based
# agents that copy requests out of band and cannot honour the mirror's
# semantics), so rules that ask for it are refused rather than served unmirrored.
UNSUPPORTED_FILTERS = frozenset({"ExtensionRef", "ExternalAuth", "RequestMirror"})

# rules[].retry.codes HAProxy can retry on (its `retry-on` response-status
# keywords); a rule that names another code is refused, not retried on fewer.
RETRY_CODES = frozenset({401, 403, 404, 408, 425, 500, 501, 502, 503, 504})
