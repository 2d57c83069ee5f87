// Command ambientctl operates an ambient mesh like kubectl operates a
// cluster: `ambientctl ambient enable -n shop`, `ambientctl ambient status`,
// `ambientctl zc workloads -A`, `ambientctl flows -n shop --follow`. The
// command tree is in ambientctl/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/ambientmesh/ambient/ambientctl/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
