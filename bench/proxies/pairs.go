package proxies

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
)

// Names of the proxy pairs, in table order.
const (
	Stunnel = "stunnel"
	HAProxy = "haproxy"
	Nginx   = "nginx"
	HBONE   = "hbone"
)

// Tools names the executables; empty fields fall back to DefaultTools.
type Tools struct {
	Stunnel string
	HAProxy string
	Nginx   string
	// Mesh is our own binary, which has the hbone-client and hbone-server
	// subcommands (normally os.Executable()).
	Mesh string
}

// DefaultTools are the Debian executables (packages stunnel4, haproxy,
// nginx + libnginx-mod-stream).
func DefaultTools() Tools {
	return Tools{Stunnel: "stunnel4", HAProxy: "haproxy", Nginx: "nginx"}
}

// File is a file written before a process starts.
type File struct {
	Path string
	Data string
}

// Proc is one side of a pair as a process to launch.
type Proc struct {
	Name  string   // e.g. "nginx-server"
	Argv  []string // Argv[0] is the executable
	Env   []string // added to this process's environment, e.g. GOMAXPROCS=1
	Files []File   // written (0600) before starting
	Ready string   // address that accepts TCP connections once it is up
	// Dial reaches Ready; nil means a net.Dialer in this process's network
	// namespace. Set it when the process runs in another namespace (its
	// Argv then starts with e.g. "ip netns exec NAME").
	Dial func(ctx context.Context, addr string) (net.Conn, error)
	// Log captures the process's stdout and stderr.
	Log string
	// ExtraLogs are other files the process logs to.
	ExtraLogs []string
}

// Pair is a complete proxy pair: Server starts first, then Client.
type Pair struct {
	Name   string
	Server Proc
	Client Proc
	Listen string   // where the load client connects (Client.Ready)
	Tunnel string   // the TLS listener (Server.Ready)
	ALPN   []string // protocols a TLS client must offer to the server side
}

// Names lists every pair name, in table order.
func Names() []string { return []string{Stunnel, HAProxy, Nginx, HBONE} }

// Build returns the pair called name laid out in l.
func Build(name string, l Layout, t Tuning, tools Tools) (Pair, error) {
	def := DefaultTools()
	tool := func(s, d string) string {
		if s != "" {
			return s
		}
		return d
	}
	var mk func(Side) Proc
	var alpn []string
	switch name {
	case Stunnel:
		bin := tool(tools.Stunnel, def.Stunnel)
		mk = func(s Side) Proc {
			conf := filepath.Join(l.Dir, fmt.Sprintf("stunnel-%s.conf", s))
			return Proc{
				Argv:  []string{bin, conf},
				Files: []File{{conf, StunnelConfig(s, l)}},
			}
		}
	case HAProxy:
		bin := tool(tools.HAProxy, def.HAProxy)
		mk = func(s Side) Proc {
			conf := filepath.Join(l.Dir, fmt.Sprintf("haproxy-%s.cfg", s))
			// -db: stay in the foreground; -f: the only config file.
			return Proc{
				Argv:  []string{bin, "-db", "-f", conf},
				Files: []File{{conf, HAProxyConfig(s, l, t)}},
			}
		}
	case Nginx:
		bin := tool(tools.Nginx, def.Nginx)
		mk = func(s Side) Proc {
			prefix := filepath.Join(l.Dir, "nginx-"+string(s))
			conf := filepath.Join(prefix, "nginx.conf")
			errLog := filepath.Join(l.Dir, fmt.Sprintf("nginx-%s.log", s))
			// -e: log start-up errors here instead of /var/log/nginx.
			return Proc{
				Argv:      []string{bin, "-p", prefix, "-e", errLog, "-c", conf, "-g", "daemon off;"},
				Files:     []File{{conf, NginxConfig(s, l, t)}},
				ExtraLogs: []string{errLog},
			}
		}
	case HBONE:
		if tools.Mesh == "" {
			return Pair{}, fmt.Errorf("proxies: hbone needs the meshbench binary path")
		}
		alpn = []string{"h2"}
		mk = func(s Side) Proc {
			if s == ClientSide {
				return Proc{Argv: []string{tools.Mesh, "hbone-client", "--procs", strconv.Itoa(t.HBONEProcs),
					"--listen", l.Listen, "--tunnel", l.Tunnel, "--dest", l.Dest, "--certs", l.Certs}}
			}
			return Proc{Argv: []string{tools.Mesh, "hbone-server", "--procs", strconv.Itoa(t.HBONEProcs),
				"--listen", l.Tunnel, "--certs", l.Certs}}
		}
	default:
		return Pair{}, fmt.Errorf("proxies: unknown pair %q (want one of %v)", name, Names())
	}
	p := Pair{Name: name, Server: mk(ServerSide), Client: mk(ClientSide), Listen: l.Listen, Tunnel: l.Tunnel, ALPN: alpn}
	for _, side := range []struct {
		proc  *Proc
		side  Side
		ready string
	}{{&p.Server, ServerSide, l.Tunnel}, {&p.Client, ClientSide, l.Listen}} {
		side.proc.Name = fmt.Sprintf("%s-%s", name, side.side)
		side.proc.Ready = side.ready
		side.proc.Log = filepath.Join(l.Dir, side.proc.Name+".out")
		side.proc.ExtraLogs = slices.Clip(side.proc.ExtraLogs)
	}
	return p, nil
}
