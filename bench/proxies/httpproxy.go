package proxies

import (
	"bytes"
	"fmt"
	"path/filepath"
	"text/template"

	"github.com/ambientmesh/ambient/bench/certdir"
)

// NginxHTTPProxyName names the nginx HTTP reverse proxy process.
const NginxHTTPProxyName = "nginx-http"

// NginxHTTPKeepalive is the number of idle upstream connections each nginx
// HTTP proxy worker keeps (the upstream's keepalive directive). It is
// above the concurrency of any closed-loop run of waypoint/procbench, so
// nginx never closes an upstream connection for want of room in the cache
// (each request over it would then hand-shake a new TLS connection), as
// the waypoint's pool of HBONE streams never has to.
const NginxHTTPKeepalive = 512

// httpProxyData is what the nginx HTTP proxy's template needs.
type httpProxyData struct {
	Layout
	Tuning
	CipherSuite       string
	CA                string
	Cert, Key         string // presented to clients (server.pem)
	UpCert, UpKey     string // presented upstream (client.pem)
	PidFile, ErrorLog string
	AccessLog         string
	TempDir           string
	Keepalive         int
}

var httpProxyTemplate = template.Must(template.New("nginx-http").Parse(`# nginx HTTP/1.1 reverse proxy, TLS in and TLS out (generated).
worker_processes {{.NginxWorkers}};
pid {{.PidFile}};
error_log {{.ErrorLog}} notice;

events {
    worker_connections 4096;
}

http {
    # One line per request, as the waypoint's flow log.
    access_log {{.AccessLog}};
    client_body_temp_path {{.TempDir}}/body;
    proxy_temp_path {{.TempDir}}/proxy;
    fastcgi_temp_path {{.TempDir}}/fastcgi;
    uwsgi_temp_path {{.TempDir}}/uwsgi;
    scgi_temp_path {{.TempDir}}/scgi;
    keepalive_timeout 300s;
    keepalive_requests 1000000;

    upstream dest {
        server {{.Dest}};
        keepalive {{.Keepalive}};
        keepalive_requests 1000000;
        keepalive_timeout 300s;
    }

    server {
        listen {{.Tunnel}} ssl;
        ssl_certificate {{.Cert}};
        ssl_certificate_key {{.Key}};
        ssl_protocols TLSv1.3;
        ssl_conf_command Ciphersuites {{.CipherSuite}};
        ssl_client_certificate {{.CA}};
        ssl_verify_client on;

        location / {
            proxy_pass https://dest;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_ssl_certificate {{.UpCert}};
            proxy_ssl_certificate_key {{.UpKey}};
            proxy_ssl_protocols TLSv1.3;
            proxy_ssl_conf_command Ciphersuites {{.CipherSuite}};
            # Chain verification without nginx's host-name check (SVIDs have
            # no DNS SAN): OpenSSL itself fails the handshake on a bad chain.
            proxy_ssl_verify off;
            proxy_ssl_conf_command VerifyMode Peer;
            proxy_ssl_conf_command VerifyCAFile {{.CA}};
            proxy_ssl_session_reuse on;
        }
    }
}
`))

// NginxHTTPProxyConfig renders the configuration of nginx as an HTTP/1.1
// reverse proxy that terminates TLS and originates it again: the role of
// an L7 proxy (a waypoint) between two TLS tunnel ends. It listens on
// l.Tunnel with TLS 1.3 (TLS_AES_128_GCM_SHA256 only), presents
// server.pem and requires a client certificate that chains to ca.pem, and
// sends every request to l.Dest over TLS 1.3, presenting client.pem and
// verifying the upstream's chain, on a keep-alive pool of
// NginxHTTPKeepalive idle connections per worker. l.Listen is not used.
// Workers: t.NginxWorkers.
func NginxHTTPProxyConfig(l Layout, t Tuning) string {
	d := httpProxyData{
		Layout: l, Tuning: t, CipherSuite: CipherSuite,
		CA:        filepath.Join(l.Certs, certdir.CAFile),
		Cert:      filepath.Join(l.Certs, certdir.ServerCertFile),
		Key:       filepath.Join(l.Certs, certdir.ServerKeyFile),
		UpCert:    filepath.Join(l.Certs, certdir.ClientCertFile),
		UpKey:     filepath.Join(l.Certs, certdir.ClientKeyFile),
		PidFile:   filepath.Join(l.Dir, NginxHTTPProxyName+".pid"),
		ErrorLog:  filepath.Join(l.Dir, NginxHTTPProxyName+".log"),
		AccessLog: filepath.Join(l.Dir, NginxHTTPProxyName+"-access.log"),
		// nginx creates the temporary directories (not their parents) at
		// start; the prefix directory exists (it holds nginx.conf).
		TempDir:   filepath.Join(l.Dir, NginxHTTPProxyName),
		Keepalive: NginxHTTPKeepalive,
	}
	var b bytes.Buffer
	if err := httpProxyTemplate.Execute(&b, d); err != nil {
		panic(fmt.Sprintf("proxies: render %s: %v", NginxHTTPProxyName, err)) // the template is static
	}
	return b.String()
}

// NginxHTTPProxy is the process of NginxHTTPProxyConfig: ready when
// l.Tunnel accepts connections.
func NginxHTTPProxy(l Layout, t Tuning, tools Tools) Proc {
	bin := tools.Nginx
	if bin == "" {
		bin = DefaultTools().Nginx
	}
	prefix := filepath.Join(l.Dir, NginxHTTPProxyName)
	conf := filepath.Join(prefix, "nginx.conf")
	errLog := filepath.Join(l.Dir, NginxHTTPProxyName+".log")
	return Proc{
		Name: NginxHTTPProxyName,
		// -e: log start-up errors here instead of the compiled-in path.
		Argv:      []string{bin, "-p", prefix, "-e", errLog, "-c", conf, "-g", "daemon off;"},
		Files:     []File{{conf, NginxHTTPProxyConfig(l, t)}},
		Ready:     l.Tunnel,
		Log:       filepath.Join(l.Dir, NginxHTTPProxyName+".out"),
		ExtraLogs: []string{errLog},
	}
}
