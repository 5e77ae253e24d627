//go:build tools

// Package tools pins the Gateway API conformance echo server,
// sigs.k8s.io/gateway-api/conformance/echo-basic, in this module's go.mod and
// go.sum: scripts/build-controlplane.sh builds it into tests/k8s/bin/echo-basic.
// It is a module of its own because its k8s.io versions differ from the
// control plane's (tests/k8s/controlplane).
package tools

import _ "sigs.k8s.io/gateway-api/conformance/echo-basic"
