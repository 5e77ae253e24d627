//go:build tools

// Package tools pins CoreDNS, github.com/coredns/coredns (its package main is
// the module root), in this module's go.mod and go.sum:
// scripts/build-controlplane.sh builds it into tests/k8s/bin/coredns. It is a
// module of its own because its k8s.io versions differ from the control
// plane's (tests/k8s/controlplane).
package tools

import _ "github.com/coredns/coredns"
