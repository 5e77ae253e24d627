//go:build tools

// Package tools pins the upstream Gateway API conformance suite,
// sigs.k8s.io/gateway-api/conformance v1.6.1, unmodified, in this module's
// go.mod and go.sum: scripts/build-controlplane.sh builds its test binary
// (`go test -c`) into tests/k8s/bin/conformance.test. The suite's own go.mod
// replaces sigs.k8s.io/gateway-api with its parent directory, so a consumer
// requires the same release of both modules. A module of its own: its k8s.io
// versions differ from the control plane's (tests/k8s/controlplane).
package tools

import _ "sigs.k8s.io/gateway-api/conformance"
