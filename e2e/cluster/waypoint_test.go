package cluster

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Identities of the waypoint story.
const (
	waypointID = "spiffe://cluster.local/ns/shop/sa/waypoint"
	frontendID = "spiffe://cluster.local/ns/shop/sa/frontend"
)

// reviewsRoute is the canary HTTPRoute on Service reviews: v1 and v2 by
// weight.
func reviewsRoute(v1, v2 int) string {
	return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: reviews
  namespace: shop
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: reviews
    port: 8080
  rules:
  - backendRefs:
    - name: reviews-v1
      port: 8080
      weight: %d
    - name: reviews-v2
      port: 8080
      weight: %d
`, v1, v2)
}

// waypointCanary: `ambientctl waypoint apply --enroll-namespace --wait`
// deploys a waypoint that becomes Ready with its configuration and
// certificate from istiod-lite; curl → frontend → reviews then goes through
// it (it records each request with the caller's identity, and reviews'
// ztunnel records the waypoint's); an HTTPRoute applied with kubectl
// splits reviews 90/10, then 0/100; deleting the waypoint and the namespace
// label sends traffic direct again.
func (e *env) waypointCanary(t *testing.T) {
	start := time.Now()
	e.mustAmbientctl(t, "waypoint", "apply", "-n", "shop", "--enroll-namespace", "--wait")
	if out, err := e.run(waitTimeout, e.kubectlBin, "-n", "shop", "rollout", "status", "deploy/waypoint", "--timeout="+waitTimeout.String()); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	wp := e.onePod(t, "shop", "gateway.networking.k8s.io/gateway-name=waypoint")
	if ready := e.mustKubectl(t, "get", "pod", "-n", "shop", wp.Name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`); ready != "True" {
		t.Fatalf("waypoint pod %s Ready=%q", wp.Name, ready)
	}
	t.Logf("waypoint %s Ready %v after ambientctl waypoint apply", wp.Name, time.Since(start).Round(time.Millisecond))

	// Connections opened before the waypoint keep their path (as in
	// Istio: ztunnel reroutes new connections only), and frontend keeps
	// its connections to reviews alive, so a new frontend pod shows the
	// path every new connection takes.
	e.mustKubectl(t, "rollout", "restart", "-n", "shop", "deploy/frontend-v1")
	if out, err := e.run(waitTimeout, e.kubectlBin, "-n", "shop", "rollout", "status", "deploy/frontend-v1", "--timeout="+waitTimeout.String()); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}

	// curl → frontend → reviews through the waypoint: it records each
	// request, with the caller's identity.
	eventually(t, "curl -> frontend -> reviews through the waypoint", func() (bool, string) {
		out, err := e.curl("http://frontend:8080/")
		if err != nil || !reachedRatings(out) {
			return false, fmt.Sprint(err, out)
		}
		for _, want := range []struct{ src, svc string }{{curlID, "frontend.shop"}, {frontendID, "reviews.shop"}} {
			if why, ok := e.waypointFlow(t, func(f waypointFlowRec) bool {
				return f.Reporter == "waypoint" && f.SrcID == want.src && strings.HasPrefix(f.DstService, want.svc) && f.Code == 200
			}); !ok {
				return false, "no waypoint flow " + want.src + " -> " + want.svc + ": " + why
			}
		}
		return true, ""
	})

	// The canary route, applied as a user would.
	routeFile := filepath.Join(t.TempDir(), "reviews-route.yaml")
	apply := func(v1, v2 int) {
		t.Helper()
		if err := os.WriteFile(routeFile, []byte(reviewsRoute(v1, v2)), 0o644); err != nil {
			t.Fatal(err)
		}
		e.mustKubectl(t, "apply", "-f", routeFile)
	}
	apply(90, 10)
	const n = 200
	var split string
	took := eventually(t, "reviews split 90/10 (±5%) over 200 requests", func() (bool, string) {
		v1, v2, err := e.reviewsVersions(n)
		if err != nil {
			return false, err.Error()
		}
		split = fmt.Sprintf("v1 %d, v2 %d", v1, v2)
		// 90 % ± 5 % of 200: 170..190 to v1, the rest to v2.
		return v1+v2 == n && v1 >= 170 && v1 <= 190, split
	})
	t.Logf("90/10 split in force %v after kubectl apply: %s", took.Round(time.Millisecond), split)
	apply(0, 100)
	eventually(t, "every request to reviews-v2", func() (bool, string) {
		v1, v2, err := e.reviewsVersions(n)
		if err != nil {
			return false, err.Error()
		}
		return v1 == 0 && v2 == n, fmt.Sprintf("v1 %d, v2 %d", v1, v2)
	})

	// Gone: the waypoint, its label and the route. The waypoint drains and
	// closes its pooled connections, so reviews' ztunnel records them: they
	// carried the waypoint's identity.
	e.mustAmbientctl(t, "waypoint", "delete", "-n", "shop")
	e.mustKubectl(t, "label", "namespace", "shop", "istio.io/use-waypoint-")
	e.mustKubectl(t, "delete", "-f", routeFile)
	eventually(t, "reviews' ztunnel recorded the waypoint's identity", func() (bool, string) {
		return e.hasFlow(t, func(f flow) bool {
			return f.Reporter == "destination" && strings.HasPrefix(f.DstWork, "reviews-") && f.SrcID == waypointID && f.Decision == "allow"
		})
	})
	eventually(t, "the waypoint pod gone", func() (bool, string) {
		ps := e.pods(t, "shop", "gateway.networking.k8s.io/gateway-name=waypoint")
		return len(ps) == 0, fmt.Sprintf("%+v", ps)
	})
	// Traffic is direct again: reviews' ztunnel sees curl itself (each
	// curl is a new connection, recorded when it closes).
	direct := func(f flow) bool {
		return f.Reporter == "destination" && strings.HasPrefix(f.DstWork, "reviews-") && f.SrcID == curlID
	}
	count := func() int {
		n := 0
		for _, f := range e.mustFlows(t) {
			if direct(f) {
				n++
			}
		}
		return n
	}
	before := count()
	eventually(t, "curl -> reviews direct again", func() (bool, string) {
		if out, err := e.curl("http://reviews:8080/"); err != nil {
			return false, fmt.Sprint(err, out)
		}
		if out, err := e.curl("http://frontend:8080/"); err != nil || !reachedRatings(out) {
			return false, fmt.Sprint(err, out)
		}
		got := count()
		return got > before, fmt.Sprintf("%d direct flows curl -> reviews, %d before", got, before)
	})
}

// sampleReply is what the sample app answers (cmd/sampleapp's Reply).
type sampleReply struct {
	Version   string `json:"version"`
	Upstreams []struct {
		Body json.RawMessage `json:"body"`
	} `json:"upstreams"`
}

// reviewsVersions sends n requests from curl to frontend, in one curl
// (URL globbing; frontend calls reviews once per request), and counts the
// reviews versions that answered.
func (e *env) reviewsVersions(n int) (v1, v2 int, err error) {
	out, err := e.kubectl("exec", "-n", "shop", "deploy/curl", "--", "curl", "-sS", "--fail", "--max-time", "60",
		fmt.Sprintf("http://frontend:8080/?n=[1-%d]", n))
	if err != nil {
		return 0, 0, fmt.Errorf("%v: %.500s", err, out)
	}
	type reply = sampleReply
	dec := json.NewDecoder(strings.NewReader(out))
	for dec.More() {
		var r reply
		if err := dec.Decode(&r); err != nil {
			return 0, 0, fmt.Errorf("frontend reply: %v", err)
		}
		if len(r.Upstreams) != 1 {
			return 0, 0, fmt.Errorf("frontend reply with %d upstream calls, want 1", len(r.Upstreams))
		}
		var rev reply
		if err := json.Unmarshal(r.Upstreams[0].Body, &rev); err != nil {
			return 0, 0, fmt.Errorf("reviews reply %.200s: %v", r.Upstreams[0].Body, err)
		}
		switch rev.Version {
		case "v1":
			v1++
		case "v2":
			v2++
		default:
			return 0, 0, fmt.Errorf("reviews answered version %q", rev.Version)
		}
	}
	return v1, v2, nil
}

// waypointFlowRec is a waypoint's per-request flow record.
type waypointFlowRec struct {
	Reporter   string `json:"reporter"`
	SrcID      string `json:"src.identity"`
	DstService string `json:"dst.service"`
	DstID      string `json:"dst.identity"`
	Code       int    `json:"response_code"`
}

// waypointFlow looks for a flow record matching m in the waypoint's log
// (its flow log is its stdout), as a user reads it with kubectl logs.
func (e *env) waypointFlow(t *testing.T, m func(waypointFlowRec) bool) (string, bool) {
	t.Helper()
	out, err := e.kubectl("logs", "-n", "shop", "deploy/waypoint", "--tail=-1")
	if err != nil {
		return err.Error(), false
	}
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	seen := 0
	for sc.Scan() {
		var f waypointFlowRec
		if json.Unmarshal(sc.Bytes(), &f) != nil || f.Reporter == "" {
			continue
		}
		seen++
		if m(f) {
			return "", true
		}
	}
	return fmt.Sprintf("%d waypoint flows", seen), false
}
