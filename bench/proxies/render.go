// Package proxies knows how to run each TLS proxy pair of the tunnel
// benchmark: it renders the configuration of stunnel, HAProxy and nginx (and
// the command lines of our own hbone-client/hbone-server), starts each side
// as a child process in its own process group, waits for it to listen,
// accounts its CPU time and stops it.
//
// Every pair is built the same way, so the comparison is like for like:
//
//	load client → client side (plaintext listener) ⇒ TLS 1.3, mutual auth,
//	TLS_AES_128_GCM_SHA256, ECDSA P-256 SVIDs ⇒ server side → backend
//
// Both sides verify the peer's chain against ca.pem (neither checks a host
// name: SVIDs carry only a URI SAN). The client side presents client.pem,
// the server side server.pem and requires a client certificate.
//
// For L7 paths (waypoint/procbench) NginxHTTPProxy adds a third process,
// nginx's http module as a reverse proxy between two such tunnels: TLS in
// (client certificate required), HTTP/1.1 parsed, TLS out on a keep-alive
// pool.
//
// Tuning. Found with `meshbench tunnel` on the 2-core bench machine (1 GiB
// single-stream transfers, 3 repeats, median MB/s up/down; noise is about
// ±10%, so each setting was run two or three times; bench/README.md has the
// table):
//
//   - stunnel: nothing to tune beyond TCP_NODELAY on both sockets; its
//     transfer buffer is a compile-time constant.
//   - HAProxy: tune.bufsize is what matters: 16 KiB (the default) gave
//     ~500/510 MB/s, 64 KiB ~650-740, 256 KiB ~750/750. nbthread 2 was
//     steadier than 1 (nbthread 1 swung between ~590 and ~770), so the
//     default is nbthread 2, tune.bufsize 256 KiB.
//   - nginx: proxy_buffer_size 16 KiB (the default) gave ~650/650 MB/s,
//     64 KiB ~730/775, 256 KiB ~760/790; worker_processes auto (2) was no
//     better and sometimes worse (~590/600) than 1, since one stream is
//     served by one worker. Default: 1 worker, 256 KiB.
package proxies

import (
	"bytes"
	"fmt"
	"path/filepath"
	"text/template"

	"github.com/ambientmesh/ambient/bench/certdir"
)

// CipherSuite is the only TLS 1.3 suite the C proxies are allowed to use.
const CipherSuite = "TLS_AES_128_GCM_SHA256"

// Side is one half of a proxy pair.
type Side string

// The two halves of a pair.
const (
	ClientSide Side = "client" // plaintext in, TLS out
	ServerSide Side = "server" // TLS in, plaintext out
)

// Layout is where one proxy pair lives: its working directory, the
// certificate directory and the three addresses of the chain.
type Layout struct {
	Dir    string // working directory for configs, pid files and logs
	Certs  string // certificate directory (bench/certdir layout)
	Listen string // client side's plaintext listener; the load client dials it
	Tunnel string // server side's TLS listener
	Dest   string // backend address the server side forwards to
}

// Tuning holds the knobs of the proxies.
type Tuning struct {
	HAProxyThreads  int    // nbthread of each haproxy process
	HAProxyBufSize  int    // tune.bufsize in bytes
	NginxWorkers    string // worker_processes: a count or "auto"
	NginxBufferSize int    // proxy_buffer_size in bytes
	HBONEProcs      int    // GOMAXPROCS of each hbone process
}

// DefaultTuning is the best configuration found on the 2-core bench machine.
func DefaultTuning() Tuning {
	return Tuning{HAProxyThreads: 2, HAProxyBufSize: 256 << 10, NginxWorkers: "1", NginxBufferSize: 256 << 10, HBONEProcs: 1}
}

type renderData struct {
	Layout
	Tuning
	Side        Side
	CipherSuite string
	CA          string
	Cert, Key   string
	Combined    string
	PidFile     string
	ErrorLog    string
	NginxModule string
}

func newRenderData(side Side, l Layout, t Tuning, tool string) renderData {
	d := renderData{
		Layout: l, Tuning: t, Side: side, CipherSuite: CipherSuite,
		CA:          filepath.Join(l.Certs, certdir.CAFile),
		PidFile:     filepath.Join(l.Dir, fmt.Sprintf("%s-%s.pid", tool, side)),
		ErrorLog:    filepath.Join(l.Dir, fmt.Sprintf("%s-%s.log", tool, side)),
		NginxModule: NginxStreamModule,
	}
	if side == ClientSide {
		d.Cert = filepath.Join(l.Certs, certdir.ClientCertFile)
		d.Key = filepath.Join(l.Certs, certdir.ClientKeyFile)
		d.Combined = filepath.Join(l.Certs, certdir.ClientCombinedFile)
	} else {
		d.Cert = filepath.Join(l.Certs, certdir.ServerCertFile)
		d.Key = filepath.Join(l.Certs, certdir.ServerKeyFile)
		d.Combined = filepath.Join(l.Certs, certdir.ServerCombinedFile)
	}
	return d
}

// NginxStreamModule is the dynamic stream module shipped by Debian's
// libnginx-mod-stream.
const NginxStreamModule = "/usr/lib/nginx/modules/ngx_stream_module.so"

var templates = template.Must(template.New("").Funcs(template.FuncMap{
	"client": func(s Side) bool { return s == ClientSide },
}).Parse(`
{{define "stunnel"}}; stunnel {{.Side}} side of the meshbench tunnel (generated).
foreground = yes
syslog = no
pid = {{.PidFile}}
debug = notice

[tunnel]
{{- if client .Side}}
client = yes
accept = {{.Listen}}
connect = {{.Tunnel}}
{{- else}}
accept = {{.Tunnel}}
connect = {{.Dest}}
requireCert = yes
{{- end}}
cert = {{.Cert}}
key = {{.Key}}
CAfile = {{.CA}}
verifyChain = yes
sslVersionMin = TLSv1.3
sslVersionMax = TLSv1.3
ciphersuites = {{.CipherSuite}}
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
{{end}}

{{define "haproxy"}}# haproxy {{.Side}} side of the meshbench tunnel (generated).
global
    nbthread {{.HAProxyThreads}}
    tune.bufsize {{.HAProxyBufSize}}
    ssl-default-bind-ciphersuites {{.CipherSuite}}
    ssl-default-bind-options ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3
    ssl-default-server-ciphersuites {{.CipherSuite}}
    ssl-default-server-options ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3
    log stderr format short local0 info

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    timeout client 5m
    timeout server 5m
{{if client .Side}}
frontend plain_in
    bind {{.Listen}}
    default_backend tls_out

backend tls_out
    server tunnel {{.Tunnel}} ssl crt {{.Combined}} ca-file {{.CA}} verify required ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3 ciphersuites {{.CipherSuite}}
{{- else}}
frontend tls_in
    bind {{.Tunnel}} ssl crt {{.Combined}} ca-file {{.CA}} verify required ssl-min-ver TLSv1.3 ssl-max-ver TLSv1.3 ciphersuites {{.CipherSuite}}
    default_backend plain_out

backend plain_out
    server dest {{.Dest}}
{{- end}}
{{end}}

{{define "nginx"}}# nginx {{.Side}} side of the meshbench tunnel (generated).
load_module {{.NginxModule}};
worker_processes {{.NginxWorkers}};
pid {{.PidFile}};
error_log {{.ErrorLog}} notice;

events {
    worker_connections 1024;
}

stream {
    server {
{{- if client .Side}}
        listen {{.Listen}};
        proxy_pass {{.Tunnel}};
        proxy_ssl on;
        proxy_ssl_certificate {{.Cert}};
        proxy_ssl_certificate_key {{.Key}};
        proxy_ssl_protocols TLSv1.3;
        proxy_ssl_conf_command Ciphersuites {{.CipherSuite}};
        # Chain verification without nginx's host-name check (SVIDs have no
        # DNS SAN): OpenSSL itself fails the handshake on a bad chain.
        proxy_ssl_verify off;
        proxy_ssl_conf_command VerifyMode Peer;
        proxy_ssl_conf_command VerifyCAFile {{.CA}};
{{- else}}
        listen {{.Tunnel}} ssl;
        proxy_pass {{.Dest}};
        ssl_certificate {{.Cert}};
        ssl_certificate_key {{.Key}};
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites {{.CipherSuite}};
        ssl_client_certificate {{.CA}};
        ssl_verify_client on;
{{- end}}
        proxy_buffer_size {{.NginxBufferSize}};
    }
}
{{end}}`))

func render(tool string, side Side, l Layout, t Tuning) string {
	var b bytes.Buffer
	if err := templates.ExecuteTemplate(&b, tool, newRenderData(side, l, t, tool)); err != nil {
		panic(fmt.Sprintf("proxies: render %s %s: %v", tool, side, err)) // templates are static
	}
	return b.String()
}

// StunnelConfig renders stunnel's configuration for one side.
func StunnelConfig(side Side, l Layout) string { return render("stunnel", side, l, Tuning{}) }

// HAProxyConfig renders haproxy's configuration for one side.
func HAProxyConfig(side Side, l Layout, t Tuning) string { return render("haproxy", side, l, t) }

// NginxConfig renders nginx's configuration for one side.
func NginxConfig(side Side, l Layout, t Tuning) string { return render("nginx", side, l, t) }
