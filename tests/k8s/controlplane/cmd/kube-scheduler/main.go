// Command kube-scheduler is the upstream Kubernetes scheduler, built from the
// published k8s.io/kubernetes module for gatewaylb's one-node test cluster
// (tests/k8s). It is exactly what upstream's cmd/kube-scheduler/scheduler.go does.
package main

import (
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // for JSON log format registration
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // load all the prometheus client-go plugins
	_ "k8s.io/component-base/metrics/prometheus/version"  // for version metric registration
	"k8s.io/kubernetes/cmd/kube-scheduler/app"
)

func main() {
	command := app.NewSchedulerCommand()
	code := cli.Run(command)
	os.Exit(code)
}
