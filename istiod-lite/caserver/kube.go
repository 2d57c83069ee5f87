package caserver

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"
)

// DefaultAudiences are the token audiences the CA accepts, as Istio's.
var DefaultAudiences = []string{"istio-ca"}

// Limits of the Kubernetes REST client.
const (
	kubeRequestTimeout = 10 * time.Second
	maxKubeResponse    = 1 << 20
)

// Kube is a minimal Kubernetes REST client for the two calls this package
// makes. It is safe for concurrent use.
type Kube struct {
	// Server is the apiserver URL, e.g. https://10.96.0.1:443.
	Server string
	// Token authenticates the CA itself; if TokenFile is set it is re-read
	// on every request instead (projected tokens rotate). The CA's account
	// needs create on tokenreviews (system:auth-delegator) and list on pods.
	Token     string
	TokenFile string
	// HTTPClient talks to the apiserver; nil means one built from CAData.
	HTTPClient *http.Client
}

// NewKube returns a client for server that trusts caPEM (nil: the system
// roots) and authenticates with token.
func NewKube(server string, caPEM []byte, token string) (*Kube, error) {
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if len(caPEM) > 0 {
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(caPEM) {
			return nil, errors.New("caserver: kube: no certificate in the apiserver CA PEM")
		}
		tlsCfg.RootCAs = pool
	}
	if _, err := url.Parse(server); err != nil || !strings.HasPrefix(server, "https://") {
		return nil, fmt.Errorf("caserver: kube: server %q is not an https URL", server)
	}
	return &Kube{
		Server: strings.TrimSuffix(server, "/"),
		Token:  token,
		HTTPClient: &http.Client{
			Timeout:   kubeRequestTimeout,
			Transport: &http.Transport{TLSClientConfig: tlsCfg, TLSHandshakeTimeout: 5 * time.Second},
		},
	}, nil
}

// do sends one request and decodes a 2xx JSON response into out.
func (k *Kube) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("caserver: kube %s %s: %w", method, path, err)
		}
		body = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, k.Server+path, body)
	if err != nil {
		return fmt.Errorf("caserver: kube %s %s: %w", method, path, err)
	}
	req.Header.Set("Accept", "application/json")
	if in != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	tok := k.Token
	if k.TokenFile != "" {
		b, err := os.ReadFile(k.TokenFile)
		if err != nil {
			return fmt.Errorf("caserver: kube: read token: %w", err)
		}
		tok = strings.TrimSpace(string(b))
	}
	if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	hc := k.HTTPClient
	if hc == nil {
		hc = &http.Client{Timeout: kubeRequestTimeout}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("caserver: kube %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxKubeResponse+1))
	if err != nil {
		return fmt.Errorf("caserver: kube %s %s: read response: %w", method, path, err)
	}
	if len(b) > maxKubeResponse {
		return fmt.Errorf("caserver: kube %s %s: response over %d bytes", method, path, maxKubeResponse)
	}
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("caserver: kube %s %s: %s: %s", method, path, resp.Status, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("caserver: kube %s %s: decode response: %w", method, path, err)
	}
	return nil
}

// tokenReview is the part of authentication.k8s.io/v1 TokenReview used here.
type tokenReview struct {
	APIVersion string            `json:"apiVersion"`
	Kind       string            `json:"kind"`
	Spec       tokenReviewSpec   `json:"spec"`
	Status     tokenReviewStatus `json:"status,omitempty"`
}

type tokenReviewSpec struct {
	Token     string   `json:"token"`
	Audiences []string `json:"audiences,omitempty"`
}

type tokenReviewStatus struct {
	Authenticated bool     `json:"authenticated,omitempty"`
	User          userInfo `json:"user,omitempty"`
	Audiences     []string `json:"audiences,omitempty"`
	Error         string   `json:"error,omitempty"`
}

type userInfo struct {
	Username string              `json:"username,omitempty"`
	UID      string              `json:"uid,omitempty"`
	Groups   []string            `json:"groups,omitempty"`
	Extra    map[string][]string `json:"extra,omitempty"`
}

// TokenReviewer is the production Authenticator: it asks the apiserver to
// review each token (authentication.k8s.io/v1 TokenReview) for Audiences.
type TokenReviewer struct {
	Kube *Kube
	// Audiences the token must be issued for; nil means DefaultAudiences.
	Audiences []string
}

// Authenticate implements Authenticator.
func (r *TokenReviewer) Authenticate(ctx context.Context, token string) (Caller, error) {
	auds := r.Audiences
	if auds == nil {
		auds = DefaultAudiences
	}
	in := tokenReview{
		APIVersion: "authentication.k8s.io/v1",
		Kind:       "TokenReview",
		Spec:       tokenReviewSpec{Token: token, Audiences: auds},
	}
	var out tokenReview
	if err := r.Kube.do(ctx, http.MethodPost, "/apis/authentication.k8s.io/v1/tokenreviews", in, &out); err != nil {
		return Caller{}, fmt.Errorf("caserver: token review: %w", err)
	}
	return reviewResult(out.Status, auds)
}

// reviewResult turns a TokenReview status into a Caller.
func reviewResult(st tokenReviewStatus, auds []string) (Caller, error) {
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "token not authenticated"
		}
		return Caller{}, fmt.Errorf("%w: token review: %s (want a valid service account token for audience %s)", ErrUnauthenticated, reason, strings.Join(auds, ","))
	}
	// The apiserver returns the audiences of ours the token is valid for;
	// an authenticator that ignores audiences returns none.
	if !intersects(st.Audiences, auds) {
		return Caller{}, fmt.Errorf("%w: token review: token audiences %q do not include %q", ErrUnauthenticated, st.Audiences, auds)
	}
	return CallerFromUserInfo(st.User.Username, st.User.Extra)
}

func intersects(a, b []string) bool {
	for _, x := range a {
		for _, y := range b {
			if x == y {
				return true
			}
		}
	}
	return false
}

// KubePods is the production PodLister: it lists pods with the field
// selectors spec.nodeName and spec.serviceAccountName, excluding finished
// pods, asking for at most one.
type KubePods struct {
	Kube *Kube
}

type podList struct {
	Items []struct {
		Metadata struct {
			Name string `json:"name"`
		} `json:"metadata"`
	} `json:"items"`
}

// HasPodOnNode implements PodLister.
func (p *KubePods) HasPodOnNode(ctx context.Context, node, namespace, serviceAccount string) (bool, error) {
	q := url.Values{}
	q.Set("fieldSelector", "spec.nodeName="+node+",spec.serviceAccountName="+serviceAccount+
		",status.phase!=Succeeded,status.phase!=Failed")
	q.Set("limit", "1")
	path := "/api/v1/namespaces/" + url.PathEscape(namespace) + "/pods?" + q.Encode()
	var out podList
	if err := p.Kube.do(ctx, http.MethodGet, path, nil, &out); err != nil {
		return false, fmt.Errorf("caserver: list pods of %s/%s on node %s: %w", namespace, serviceAccount, node, err)
	}
	return len(out.Items) > 0, nil
}
