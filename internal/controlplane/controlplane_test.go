package controlplane

import (
	"crypto/x509"
	"encoding/pem"
	"net"
	"os"
	"slices"
	"strings"
	"testing"
	"time"
)

func TestAPIServerArgs_ReconcilerOffOnlyForLoopback(t *testing.T) {
	p := &PKI{CACert: "ca", ServingCert: "s", ServingKey: "k", SAKey: "sa", SAPub: "sp"}
	loop := APIServerArgs(APIServer{EtcdURL: "http://e", BindAddress: "127.0.0.1", Port: 1, PKI: p})
	if !slices.Contains(loop, "--endpoint-reconciler-type=none") || !slices.Contains(loop, "--advertise-address=127.0.0.1") {
		t.Errorf("loopback args: %v", loop)
	}
	link := APIServerArgs(APIServer{EtcdURL: "http://e", BindAddress: "172.30.0.254", Port: 6443, PKI: p, ServiceCIDR: "10.97.0.0/16"})
	if slices.Contains(link, "--endpoint-reconciler-type=none") || !slices.Contains(link, "--advertise-address=172.30.0.254") ||
		!slices.Contains(link, "--service-cluster-ip-range=10.97.0.0/16") || !slices.Contains(link, "--secure-port=6443") {
		t.Errorf("host-link args: %v", link)
	}
}

func TestControllerManagerArgs_AllocatesNodeCIDRsOnlyWhenAsked(t *testing.T) {
	p := &PKI{CACert: "ca", CAKey: "ck", SAKey: "sa"}
	without := strings.Join(ControllerManagerArgs(ControllerManager{Kubeconfig: "k", PKI: p}), " ")
	if strings.Contains(without, "--allocate-node-cidrs") {
		t.Errorf("allocates without a cluster CIDR: %s", without)
	}
	with := ControllerManagerArgs(ControllerManager{Kubeconfig: "k", PKI: p, ClusterCIDR: "10.244.0.0/16", ExtraArgs: []string{"--x"}})
	if !slices.Contains(with, "--allocate-node-cidrs=true") || !slices.Contains(with, "--cluster-cidr=10.244.0.0/16") || with[len(with)-1] != "--x" {
		t.Errorf("with a cluster CIDR: %v", with)
	}
}

func TestWritePKI_ServingCertCoversExtraIPs(t *testing.T) {
	dir := t.TempDir()
	p, err := WritePKI(dir, time.Hour, net.ParseIP("172.30.0.254"))
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p.ServingCert)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{"127.0.0.1", "10.96.0.1", "172.30.0.254"} {
		if err := cert.VerifyHostname(ip); err != nil {
			t.Errorf("serving certificate: %v", err)
		}
	}
	if d := cert.NotAfter.Sub(time.Now()); d > time.Hour || d < 50*time.Minute {
		t.Errorf("validity ends in %v, want about 1h", d)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.CAPEM)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool}); err != nil {
		t.Errorf("serving certificate does not chain to the CA: %v", err)
	}
}

func TestKubeconfigYAML_NamesEverythingAfterTheCluster(t *testing.T) {
	y := string(KubeconfigYAML("ambient", "https://172.30.0.254:6443", []byte("pem"), "tok"))
	for _, s := range []string{"server: https://172.30.0.254:6443", "certificate-authority-data: cGVt", "token: tok", "current-context: ambient", "user: ambient-admin"} {
		if !strings.Contains(y, s) {
			t.Errorf("kubeconfig lacks %q:\n%s", s, y)
		}
	}
}

func TestWritePKI_KubeletClientCertIsTheAPIServersMasterIdentity(t *testing.T) {
	p, err := WritePKI(t.TempDir(), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p.KubeletClientCert)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(b)
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if cert.Subject.CommonName != KubeletClientCN || !slices.Equal(cert.Subject.Organization, []string{"system:masters"}) {
		t.Errorf("subject %v, want CN %s O system:masters", cert.Subject, KubeletClientCN)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.CAPEM)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("kubelet client certificate is no client certificate of the CA: %v", err)
	}
	if _, err := os.Stat(p.KubeletClientKey); err != nil {
		t.Error(err)
	}
	args := APIServerArgs(APIServer{EtcdURL: "http://e", BindAddress: "127.0.0.1", Port: 1, PKI: p})
	for _, want := range []string{"--kubelet-client-certificate=" + p.KubeletClientCert, "--kubelet-client-key=" + p.KubeletClientKey, "--kubelet-preferred-address-types=InternalIP"} {
		if !slices.Contains(args, want) {
			t.Errorf("apiserver args lack %s", want)
		}
	}
}
