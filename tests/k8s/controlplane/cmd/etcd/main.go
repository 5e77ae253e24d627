// Command etcd is the upstream etcd server (go.etcd.io/etcd/server/v3's
// etcdmain, as etcd's own binary runs it), built for gatewaylb's tests
// (tests/k8s). It takes etcd's usual flags.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
