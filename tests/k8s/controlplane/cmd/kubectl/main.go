// Command kubectl is the upstream Kubernetes command-line client, built from
// the published k8s.io/kubernetes module (k8s.io/kubectl at the same release)
// for gatewaylb's tests (tests/k8s). It is exactly what upstream's
// cmd/kubectl/kubectl.go does.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	"k8s.io/kubectl/pkg/cmd"
	"k8s.io/kubectl/pkg/cmd/util"

	// Import to initialize client auth plugins (oidc; adds no modules).
	_ "k8s.io/client-go/plugin/pkg/client/auth"
)

func main() {
	// Parse the verbosity flag by hand so that klog honours it while the
	// command is built (plugins, .kuberc), before cli.RunNoErrOutput parses
	// the flags.
	logs.GlogSetter(cmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := cmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		// Pretty-print the error and exit with an error.
		util.CheckErr(err)
	}
}
