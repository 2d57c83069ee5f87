// Command meshbench benchmarks the mesh's data path.
//
// Subcommands:
//
//	meshbench tunnel [flags]        compare our HBONE tunnel with stunnel,
//	                                haproxy and nginx TLS proxy pairs and
//	                                direct TCP (see bench/README.md)
//	meshbench hbone-client [flags]  client side of the hbone pair (started
//	                                by "tunnel")
//	meshbench hbone-server [flags]  server side of the hbone pair
package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
)

const usage = `usage: meshbench <command> [flags]

commands:
  tunnel        run the tunnel benchmark (meshbench tunnel -h for flags)
  hbone-client  client side of the HBONE pair (started by tunnel)
  hbone-server  server side of the HBONE pair (started by tunnel)
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "tunnel":
		err = runTunnel(args)
	case "hbone-client":
		err = runHBONEClient(args)
	case "hbone-server":
		err = runHBONEServer(args)
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
		return
	default:
		fmt.Fprintf(os.Stderr, "meshbench: unknown command %q\n\n%s", cmd, usage)
		os.Exit(2)
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "meshbench %s: %v\n", os.Args[1], err)
		os.Exit(1)
	}
}
