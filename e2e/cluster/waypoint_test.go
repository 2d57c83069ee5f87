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

// reviewsHTTPRoute is the HTTPRoute "reviews" attached to Service reviews
// with the given rules (YAML list items under rules:).
func reviewsHTTPRoute(rules string) string {
	return `apiVersion: gateway.networking.k8s.io/v1
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
` + rules
}

// reviewsRoute is the canary HTTPRoute on Service reviews: requests with
// x-user: beta to v2, the rest to v1 and v2 by weight.
func reviewsRoute(v1, v2 int) string {
	return reviewsHTTPRoute(fmt.Sprintf(`  - matches:
    - headers:
      - name: x-user
        value: beta
    backendRefs:
    - name: reviews-v2
      port: 8080
  - backendRefs:
    - name: reviews-v1
      port: 8080
      weight: %d
    - name: reviews-v2
      port: 8080
      weight: %d
`, v1, v2))
}

// applyFile writes doc to file and applies it with kubectl, as a user
// would; file can be deleted with kubectl delete -f afterwards.
func (e *env) applyFile(t *testing.T, file, doc string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	e.mustKubectl(t, "apply", "-f", file)
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
		e.applyFile(t, routeFile, reviewsRoute(v1, v2))
	}
	apply(90, 10)
	// The route is in force once x-user: beta always reaches v2 (without
	// it half the requests would reach v1); frontend passes x-user on.
	const n = 200
	took := eventually(t, "x-user: beta always reaches reviews-v2", func() (bool, string) {
		v1, v2, err := e.reviewsVersions(n, "x-user: beta")
		if err != nil {
			return false, err.Error()
		}
		return v1 == 0 && v2 == n, fmt.Sprintf("v1 %d, v2 %d", v1, v2)
	})
	t.Logf("route in force %v after kubectl apply", took.Round(time.Millisecond))
	const canaryN = 2000
	v1, v2, err := e.reviewsVersions(canaryN)
	if err != nil {
		t.Fatal(err)
	}
	// 90 % ± 3 % of 2,000: 1,740..1,860 to v1, the rest to v2.
	if v1+v2 != canaryN || v1 < 1740 || v1 > 1860 {
		t.Fatalf("90/10 canary over %d requests: v1 %d, v2 %d; want v1 within 90±3%%", canaryN, v1, v2)
	}
	t.Logf("90/10 canary over %d requests: v1 %d (%.1f%%), v2 %d", canaryN, v1, 100*float64(v1)/canaryN, v2)

	// Shifting to 0/100 under load fails no request: requests in flight
	// finish on the route they started with.
	type result struct {
		v1, v2 int
		err    error
	}
	during := make(chan result, 1)
	go func() {
		v1, v2, err := e.reviewsVersions(400)
		during <- result{v1, v2, err}
	}()
	apply(0, 100)
	r := <-during
	if r.err != nil || r.v1+r.v2 != 400 {
		t.Fatalf("requests during the shift to 0/100: v1 %d, v2 %d, %v; want all 400 answered", r.v1, r.v2, r.err)
	}
	t.Logf("during the shift to 0/100: 400 of 400 answered (v1 %d, v2 %d)", r.v1, r.v2)
	eventually(t, "every request to reviews-v2", func() (bool, string) {
		v1, v2, err := e.reviewsVersions(n)
		if err != nil {
			return false, err.Error()
		}
		return v1 == 0 && v2 == n, fmt.Sprintf("v1 %d, v2 %d", v1, v2)
	})

	t.Run("HTTP2AndGRPC", e.waypointProtocols)
	t.Run("L7AuthorizationPolicy", e.waypointL7Policy)
	t.Run("RetriesWithExperimentalHTTPRoute", e.waypointRetries)
	t.Run("LocalTrafficPolicyAndDestinationRule", e.waypointResilience)
	t.Run("TracesToOTLP", e.waypointTracing)
	t.Run("OverQUIC", e.waypointOverQUIC)

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
// (URL globbing; frontend calls reviews once per request) with the given
// headers, and counts the reviews versions that answered.
func (e *env) reviewsVersions(n int, headers ...string) (v1, v2 int, err error) {
	args := []string{"exec", "-n", "shop", "deploy/curl", "--", "curl", "-sS", "--fail", "--max-time", "120"}
	for _, h := range headers {
		args = append(args, "-H", h)
	}
	out, err := e.kubectl(append(args, fmt.Sprintf("http://frontend:8080/?n=[1-%d]", n))...)
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
	Method     string `json:"method"`
	Path       string `json:"path"`
	Code       int    `json:"response_code"`
	Policy     string `json:"policy"`
	Transport  string `json:"transport"`
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

// waypointOverQUIC: with the namespace annotated for QUIC, the waypoint's
// pod (in that namespace) asks for it too, so curl's ztunnel reaches the
// waypoint over HBONE/3 (UDP 15008) and the waypoint's flows say so.
func (e *env) waypointOverQUIC(t *testing.T) {
	e.mustKubectl(t, "annotate", "namespace", "shop", "ambientmesh.io/tunnel-transport=quic", "--overwrite")
	defer e.mustKubectl(t, "annotate", "namespace", "shop", "ambientmesh.io/tunnel-transport-")
	took := eventually(t, "curl -> frontend through the waypoint over HBONE/3", func() (bool, string) {
		out, err := e.curl("http://frontend:8080/")
		if err != nil || !reachedRatings(out) {
			return false, fmt.Sprint(err, out)
		}
		return e.waypointFlowOK(t, func(f waypointFlowRec) bool {
			return f.SrcID == curlID && strings.HasPrefix(f.DstService, "frontend.shop") && f.Code == 200 && f.Transport == "hbone3"
		})
	})
	t.Logf("the waypoint served over QUIC %v after kubectl annotate", took.Round(time.Millisecond))
}

// waypointFlowOK is waypointFlow in eventually's order: found, and why not.
func (e *env) waypointFlowOK(t *testing.T, m func(waypointFlowRec) bool) (bool, string) {
	why, ok := e.waypointFlow(t, m)
	return ok, why
}

// waypointProtocols: an HTTP/2 client (curl, prior knowledge) and a gRPC
// client (frontend's health check of reviews) work through the waypoint,
// which speaks HTTP/2 on to reviews.
func (e *env) waypointProtocols(t *testing.T) {
	out, err := e.kubectl("exec", "-n", "shop", "deploy/curl", "--", "curl", "-sS", "--fail", "--max-time", "10",
		"--http2-prior-knowledge", "-w", `\nhttp_version=%{http_version}`, "http://reviews:8080/")
	if err != nil {
		t.Fatalf("curl --http2-prior-knowledge: %v\n%s", err, out)
	}
	body, version, _ := strings.Cut(out, "\nhttp_version=")
	var rep struct {
		Proto string `json:"proto"`
	}
	if err := json.Unmarshal([]byte(body), &rep); err != nil || strings.TrimSpace(version) != "2" || rep.Proto != "HTTP/2.0" {
		t.Fatalf("h2c through the waypoint: curl spoke HTTP/%s, reviews saw %q (%v): %s", version, rep.Proto, err, out)
	}
	eventually(t, "the waypoint's flow of curl's HTTP/2 request", func() (bool, string) {
		// The route in force sends it on to the reviews-v2 Service.
		why, ok := e.waypointFlow(t, func(f waypointFlowRec) bool {
			return f.SrcID == curlID && strings.HasPrefix(f.DstService, "reviews-v2.shop") && f.Path == "/" && f.Code == 200
		})
		return ok, why
	})

	out, err = e.curl("http://frontend:8080/call?url=grpc://reviews:8080")
	var call struct {
		Upstreams []struct {
			GRPCStatus string `json:"grpcStatus"`
			Error      string `json:"error"`
		} `json:"upstreams"`
	}
	if err != nil || json.Unmarshal([]byte(out), &call) != nil || len(call.Upstreams) != 1 || call.Upstreams[0].GRPCStatus != "SERVING" {
		t.Fatalf("gRPC health check frontend -> reviews: %v\n%s", err, out)
	}
	eventually(t, "the waypoint's flow of the gRPC call", func() (bool, string) {
		why, ok := e.waypointFlow(t, func(f waypointFlowRec) bool {
			return f.SrcID == frontendID && f.Method == "POST" && f.Path == "/grpc.health.v1.Health/Check" && f.Code == 200
		})
		return ok, why
	})
}

// reviewsAdminPolicy denies /admin on reviews at the waypoint (targetRefs),
// and /hostcheck when the Host is reviews' name in any case.
const reviewsAdminPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: reviews-admin
  namespace: shop
spec:
  targetRefs:
  - group: ""
    kind: Service
    name: reviews
  action: DENY
  rules:
  - to:
    - operation:
        paths: ["/admin", "/admin/*"]
  - to:
    - operation:
        hosts: ["REVIEWS.SHOP.SVC.CLUSTER.LOCAL:*"]
        paths: ["/hostcheck"]
`

// waypointL7Policy: an L7 DENY policy applied with kubectl is enforced by
// the waypoint on the normalized path (DESIGN §7), with 403 and a flow
// record naming the policy; what it does not cover reaches reviews (whose
// 404 says so).
func (e *env) waypointL7Policy(t *testing.T) {
	file := filepath.Join(t.TempDir(), "reviews-admin.yaml")
	e.applyFile(t, file, reviewsAdminPolicy)
	defer e.mustKubectl(t, "delete", "-f", file)
	code := func(method, url string) (string, error) {
		return e.kubectl("exec", "-n", "shop", "deploy/curl", "--", "curl", "-sS", "--max-time", "5",
			"--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, url)
	}
	eventually(t, "POST /admin denied by the waypoint", func() (bool, string) {
		got, err := code("POST", "http://reviews:8080/admin")
		return err == nil && got == "403", fmt.Sprint(got, err)
	})
	for _, c := range []struct{ method, path, want string }{
		{"GET", "/public", "404"}, // allowed: reviews answers
		{"POST", "/admin", "403"},
		{"GET", "/admin/users", "403"},
		{"GET", "//admin", "403"},
		{"GET", "/%2Fadmin", "403"},
		{"GET", "/%5Cadmin", "403"},
		{"GET", "/admin;x=y", "403"},
		{"GET", "/./admin", "403"},
		{"GET", "/a/../admin", "403"},
		{"GET", "/ADMIN", "404"}, // the rule is case-sensitive
		{"GET", "/%00admin", "400"},
	} {
		got, err := code(c.method, "http://reviews:8080"+c.path)
		if err != nil || got != c.want {
			t.Errorf("%s %s: %s (%v), want %s", c.method, c.path, got, err, c.want)
		}
	}
	for _, c := range []struct{ host, want string }{
		{"reviews.shop.svc.cluster.local", "403"}, // the rule says REVIEWS.SHOP…: hosts match in any case
		{"reviews", "404"},
	} {
		got, err := code("GET", "http://"+c.host+":8080/hostcheck")
		if err != nil || got != c.want {
			t.Errorf("GET http://%s:8080/hostcheck: %s (%v), want %s", c.host, got, err, c.want)
		}
	}
	eventually(t, "the waypoint's flow of a denial names the policy", func() (bool, string) {
		why, ok := e.waypointFlow(t, func(f waypointFlowRec) bool {
			return f.SrcID == curlID && f.Code == 403 && f.Method == "POST" && f.Path == "/admin" && strings.Contains(f.Policy, "reviews-admin")
		})
		return ok, why
	})
}

// waypointRetries: Gateway API's experimental HTTPRoute CRD applied
// server-side as README.md says, then a route to reviews-v1 whose rule
// retries 503s: a backend failing every second request with 503 answers
// them all (without the retry, half fail).
func (e *env) waypointRetries(t *testing.T) {
	if out, err := e.kubectl("apply", "--server-side", "--force-conflicts", "-k", "manifests/gateway-api-experimental/"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	e.mustKubectl(t, "wait", "--for=condition=Established", "crd/httproutes.gateway.networking.k8s.io", "--timeout=60s")
	file := filepath.Join(t.TempDir(), "reviews-retry.yaml")
	apply := func(retry string) {
		t.Helper()
		e.applyFile(t, file, reviewsHTTPRoute("  - backendRefs:\n    - name: reviews-v1\n      port: 8080\n"+retry))
	}
	// codes sends n requests to reviews' /fail (every second one 503).
	codes := func(n int) (map[string]int, error) {
		return e.statusCodes(fmt.Sprintf("http://reviews:8080/fail?percent=50&code=503&n=[1-%d]", n))
	}

	apply("")
	eventually(t, "the route to reviews-v1 in force", func() (bool, string) {
		v1, v2, err := e.reviewsVersions(10)
		return err == nil && v1 == 10, fmt.Sprintf("v1 %d, v2 %d, %v", v1, v2, err)
	})
	without, err := codes(100)
	if err != nil {
		t.Fatal(err)
	}
	if without["503"] < 40 || without["503"] > 60 {
		t.Fatalf("without a retry: %v; want about half 503", without)
	}

	apply("    retry:\n      attempts: 3\n      codes: [503]\n      backoff: 10ms\n")
	eventually(t, "the retry in force", func() (bool, string) {
		got, err := codes(20)
		return err == nil && got["200"] == 20, fmt.Sprintf("%v %v", got, err)
	})
	with, err := codes(500)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("/fail (50 %% 503): without a retry %v; with attempts 3 on 503 %v", without, with)
	if with["200"] < 495 {
		t.Fatalf("with the retry: %v; want at least 99 %% 200", with)
	}
	// The route carried the retry: it is in the stored object, not pruned.
	if got := e.mustKubectl(t, "get", "httproute", "reviews", "-n", "shop", "-o", "jsonpath={.spec.rules[0].retry.attempts}"); strings.TrimSpace(got) != "3" {
		t.Fatalf("stored route's retry.attempts = %q, want 3", got)
	}
}

// waypointResilience: a LocalTrafficPolicy and a DestinationRule applied
// with kubectl are accepted (status written by istiod-lite) and enforced by
// the waypoint: a fault abort answers every request with its status, a
// local rate limit answers 429 beyond its bucket, and deleting the policy
// lets every request through again.
func (e *env) waypointResilience(t *testing.T) {
	file := filepath.Join(t.TempDir(), "reviews-resilience.yaml")
	apply := func(policy string) {
		t.Helper()
		doc := `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata:
  name: reviews
  namespace: shop
spec:
  host: reviews.shop.svc.cluster.local
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s}
---
apiVersion: policy.ambientmesh.io/v1alpha1
kind: LocalTrafficPolicy
metadata:
  name: reviews-limits
  namespace: shop
spec:
  targetRefs: [{kind: Service, name: reviews}]
` + policy
		e.applyFile(t, file, doc)
	}
	codes := func(n int) (map[string]int, error) {
		return e.statusCodes(fmt.Sprintf("http://reviews:8080/?n=[1-%d]", n))
	}
	accepted := func(kind, name string) (bool, string) {
		out, err := e.kubectl("get", kind, name, "-n", "shop", "-o", `jsonpath={.status.conditions[?(@.type=="Accepted")].status}`)
		return err == nil && strings.TrimSpace(out) == "True", fmt.Sprintf("Accepted=%q %v", strings.TrimSpace(out), err)
	}

	apply("  fault:\n    abort: {httpStatus: 418, percentage: {value: 100}}\n")
	eventually(t, "the LocalTrafficPolicy accepted", func() (bool, string) { return accepted("localtrafficpolicy", "reviews-limits") })
	eventually(t, "the DestinationRule accepted", func() (bool, string) { return accepted("destinationrule", "reviews") })
	took := eventually(t, "every request aborted with 418", func() (bool, string) {
		got, err := codes(20)
		return err == nil && got["418"] == 20, fmt.Sprintf("%v %v", got, err)
	})
	t.Logf("fault abort in force %v after kubectl apply", took.Round(time.Millisecond))

	apply("  rateLimit: {requestsPerUnit: 5, unit: second, burst: 5}\n")
	var limited map[string]int
	eventually(t, "requests beyond 5 per second answered 429", func() (bool, string) {
		got, err := codes(60)
		limited = got
		// Each try drains the bucket and the next comes a fraction of a
		// second later, so only the first full try may see all 5 tokens:
		// ask for some answered and most refused, nothing else.
		return err == nil && got["200"] >= 1 && got["429"] >= 30 && got["200"]+got["429"] == 60, fmt.Sprintf("%v %v", got, err)
	})
	t.Logf("60 requests in one burst against 5 per second (burst 5): %v", limited)

	e.mustKubectl(t, "delete", "-f", file)
	eventually(t, "every request answered 200 without the policy", func() (bool, string) {
		got, err := codes(60)
		return err == nil && got["200"] == 60, fmt.Sprintf("%v %v", got, err)
	})
}

// statusCodes sends the requests of url (with curl's [1-n] globbing, one
// request per value) from the curl pod in one curl, and counts the
// answers by status.
func (e *env) statusCodes(url string) (map[string]int, error) {
	out, err := e.kubectl("exec", "-n", "shop", "deploy/curl", "--", "curl", "-sS", "--max-time", "120",
		"-o", "/dev/null", "-w", `%{http_code}\n`, url)
	if err != nil {
		return nil, fmt.Errorf("%v: %.300s", err, out)
	}
	got := map[string]int{}
	for _, c := range strings.Fields(out) {
		got[c]++
	}
	return got, nil
}
