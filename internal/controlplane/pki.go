package controlplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// PKI holds the paths of the files WritePKI creates, and the CA in PEM.
type PKI struct {
	CACert, CAKey           string // self-signed CA, also the cluster signing CA
	ServingCert, ServingKey string // apiserver serving certificate
	SAKey, SAPub            string // service-account token signing key pair (RSA)
	// KubeletClientCert and KubeletClientKey are the client certificate
	// the apiserver presents to kubelets (logs, exec, port-forward): CN
	// KubeletClientCN, O system:masters, signed by the CA.
	KubeletClientCert, KubeletClientKey string
	CAPEM                               []byte
}

// KubeletClientCN is the common name of the apiserver's kubelet client
// certificate, the identity kubelets (the node agent) let in.
const KubeletClientCN = "kube-apiserver-kubelet-client"

// WritePKI generates a CA, an apiserver serving certificate signed by it
// (for 127.0.0.1, the first service address 10.96.0.1, the extra IPs and
// the kubernetes.default names), the apiserver's kubelet client
// certificate, and a service-account key pair, and writes them as PEM
// files into dir: ca.crt, ca.key, apiserver.crt, apiserver.key,
// apiserver-kubelet-client.crt, apiserver-kubelet-client.key, sa.key,
// sa.pub. Certificates are valid for validity.
func WritePKI(dir string, validity time.Duration, extraIPs ...net.IP) (*PKI, error) {
	p := &PKI{
		CACert:      filepath.Join(dir, "ca.crt"),
		CAKey:       filepath.Join(dir, "ca.key"),
		ServingCert: filepath.Join(dir, "apiserver.crt"),
		ServingKey:  filepath.Join(dir, "apiserver.key"),
		SAKey:       filepath.Join(dir, "sa.key"),
		SAPub:       filepath.Join(dir, "sa.pub"),

		KubeletClientCert: filepath.Join(dir, "apiserver-kubelet-client.crt"),
		KubeletClientKey:  filepath.Join(dir, "apiserver-kubelet-client.key"),
	}
	now := time.Now()

	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("controlplane: CA key: %w", err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "ambient-cluster-ca"},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(validity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("controlplane: CA cert: %w", err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, fmt.Errorf("controlplane: parse CA cert: %w", err)
	}
	p.CAPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})

	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("controlplane: serving key: %w", err)
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "kube-apiserver"},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		IPAddresses:  append([]net.IP{net.IPv4(127, 0, 0, 1), net.ParseIP("10.96.0.1")}, extraIPs...),
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default",
			"kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("controlplane: serving cert: %w", err)
	}

	kcKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("controlplane: kubelet client key: %w", err)
	}
	kcTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(3),
		Subject:      pkix.Name{CommonName: KubeletClientCN, Organization: []string{"system:masters"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	kcDER, err := x509.CreateCertificate(rand.Reader, kcTmpl, ca, &kcKey.PublicKey, caKey)
	if err != nil {
		return nil, fmt.Errorf("controlplane: kubelet client cert: %w", err)
	}

	saKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return nil, fmt.Errorf("controlplane: service-account key: %w", err)
	}
	saPub, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("controlplane: service-account public key: %w", err)
	}

	files := []struct {
		path, typ string
		der       []byte
		key       any
	}{
		{p.CACert, "CERTIFICATE", caDER, nil},
		{p.CAKey, "", nil, caKey},
		{p.ServingCert, "CERTIFICATE", srvDER, nil},
		{p.ServingKey, "", nil, srvKey},
		{p.KubeletClientCert, "CERTIFICATE", kcDER, nil},
		{p.KubeletClientKey, "", nil, kcKey},
		{p.SAKey, "RSA PRIVATE KEY", x509.MarshalPKCS1PrivateKey(saKey), nil},
		{p.SAPub, "PUBLIC KEY", saPub, nil},
	}
	for _, f := range files {
		typ, der := f.typ, f.der
		if f.key != nil {
			typ = "EC PRIVATE KEY"
			if der, err = x509.MarshalECPrivateKey(f.key.(*ecdsa.PrivateKey)); err != nil {
				return nil, fmt.Errorf("controlplane: marshal key for %s: %w", f.path, err)
			}
		}
		data := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
		if err := os.WriteFile(f.path, data, 0o600); err != nil {
			return nil, fmt.Errorf("controlplane: %w", err)
		}
	}
	return p, nil
}
