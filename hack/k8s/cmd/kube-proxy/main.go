// Command kube-proxy is the upstream service proxy, built from the
// k8s.io/kubernetes module for the project's local cluster (one per node).
package main

import (
	"os"

	"k8s.io/component-base/cli"
	"k8s.io/kubernetes/cmd/kube-proxy/app"
)

func main() { os.Exit(cli.Run(app.NewProxyCommand())) }
