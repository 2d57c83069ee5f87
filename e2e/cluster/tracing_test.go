package cluster

import (
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"
)

// The tracing story's names: the sample trace sink (manifests/samples/tracing)
// and the flags that point istiod-lite's waypoints at it.
const (
	collectorDir      = "manifests/samples/tracing/"
	collectorEndpoint = "otel-collector.observability.svc.cluster.local:4317"
	collectorSpans    = "http://otel-collector.observability.svc.cluster.local:8080/spans"
	reviewsID         = "spiffe://cluster.local/ns/shop/sa/reviews"
	// waypointService is the waypoint's resource service.name,
	// "<gateway>.<namespace>" (cmd/waypoint).
	waypointService = "waypoint.shop"
)

// tracingArgs are what a user adds to istiod-lite's args to trace every
// waypoint request (sampling 100 %) to the sample collector.
var tracingArgs = []string{
	"--waypoint-otlp-endpoint=" + collectorEndpoint,
	"--waypoint-otlp-insecure",
	"--waypoint-trace-sampling=100",
}

// sinkSpan is a span of the sink's GET /spans (cmd/sampleapp's SpanRecord).
type sinkSpan struct {
	TraceID      string            `json:"traceId"`
	SpanID       string            `json:"spanId"`
	ParentSpanID string            `json:"parentSpanId"`
	Name         string            `json:"name"`
	Kind         string            `json:"kind"`
	Service      string            `json:"service"`
	Status       string            `json:"status"`
	Attributes   map[string]string `json:"attributes"`
}

// tracedReply is what the sample app answers, with the traceparent it
// received, its upstreams' replies nested.
type tracedReply struct {
	Service     string `json:"service"`
	TraceParent string `json:"traceparent"`
	Upstreams   []struct {
		Body json.RawMessage `json:"body"`
	} `json:"upstreams"`
}

// hop is one call of the chain curl → frontend → reviews → ratings, each
// through the waypoint: who called, which Service, and the traceparent the
// called app received.
type hop struct {
	srcID, srcWorkload  string // the caller's identity and pod name prefix
	dstID, dstService   string // the callee's identity and Service hostname prefix
	dstWorkload, seenTP string // the callee's pod name prefix; the traceparent it saw
}

// waypointTracing: the sample trace sink applied with kubectl, reviews
// restarted (so that its calls to ratings take the waypoint), istiod-lite's
// Deployment patched with --waypoint-otlp-* as a user would, and the
// waypoint re-rendered with --otlp-endpoint; a request from curl with a
// W3C traceparent (sampled) then yields, in the sink, one waypoint SERVER
// span per hop of curl → frontend → reviews → ratings: the first the child
// of curl's span, each next the child of the one before, each with the
// caller's and callee's identities, workloads and Service and the response
// code; each app received a traceparent with the same trace id naming the
// waypoint's span. istiod-lite's args are restored at the end and the
// waypoint re-rendered without tracing.
func (e *env) waypointTracing(t *testing.T) {
	start := time.Now()
	e.mustKubectl(t, "apply", "-k", collectorDir)
	e.rolloutStatus(t, "observability", "deploy/otel-collector")
	t.Logf("trace sink Ready %v after kubectl apply", time.Since(start).Round(time.Millisecond))

	// reviews keeps its connections to ratings alive, and those opened
	// before the waypoint keep their direct path (as in Istio: ztunnel
	// reroutes new connections only); new reviews pods send every call to
	// ratings through the waypoint, as the story's restart of frontend does
	// for frontend's to reviews.
	start = time.Now()
	e.mustKubectl(t, "rollout", "restart", "-n", "shop", "deploy/reviews-v1", "deploy/reviews-v2")
	e.rolloutStatus(t, "shop", "deploy/reviews-v1")
	e.rolloutStatus(t, "shop", "deploy/reviews-v2")
	e.waitPodsGone(t, "shop", "app=reviews", 2)
	t.Logf("reviews restarted in %v", time.Since(start).Round(time.Millisecond))

	// Tracing on, through istiod-lite's args; restored whatever happens.
	orig := e.istiodArgs(t)
	if slices.ContainsFunc(orig, func(a string) bool { return strings.HasPrefix(a, "--waypoint-otlp-") }) {
		t.Fatalf("istiod-lite already has tracing args: %q", orig)
	}
	t.Cleanup(func() { e.restoreIstiodArgs(t, orig) })
	start = time.Now()
	// The patch manifests/README.md shows.
	var ops []map[string]any
	for _, a := range tracingArgs {
		ops = append(ops, map[string]any{"op": "add", "path": "/spec/template/spec/containers/0/args/-", "value": a})
	}
	e.patchIstiod(t, ops)
	if got := e.istiodArgs(t); !slices.Equal(got, append(slices.Clone(orig), tracingArgs...)) {
		t.Fatalf("istiod-lite's args after the patch: %q", got)
	}
	e.waitIstiodRollout(t)
	e.waitWaypointArgs(t, true)
	var names []string
	for _, p := range e.pods(t, "shop", "gateway.networking.k8s.io/gateway-name=waypoint") {
		names = append(names, p.Name)
	}
	t.Logf("waypoint %v with --otlp-endpoint Ready %v after patching istiod-lite", names, time.Since(start).Round(time.Millisecond))

	// A request from curl as the child of a span of curl's own. The traced
	// waypoint is on every hop's path once each app receives a traceparent
	// of curl's trace naming a span other than its caller's: a waypoint
	// without tracing passes it untouched. (Keep-alive connections opened
	// before the rollout went through the old waypoint pod, which the wait
	// above saw go.)
	start = time.Now()
	var traceID, parentID string
	var hops []hop
	eventually(t, "every app receives a traceparent naming the waypoint's span", func() (bool, string) {
		traceID, parentID = randomHex(16), randomHex(8)
		out, err := e.kubectl("exec", "-n", "shop", "deploy/curl", "--", "curl", "-sS", "--fail", "--max-time", "10",
			"-H", "traceparent: 00-"+traceID+"-"+parentID+"-01", "http://frontend:8080/")
		if err != nil || !reachedRatings(out) {
			return false, fmt.Sprint(err, out)
		}
		var err2 error
		hops, err2 = chainHops(out)
		if err2 != nil {
			return false, err2.Error()
		}
		caller := parentID
		for i, h := range hops {
			tid, pid, ok := parseTraceparent(h.seenTP)
			if !ok || tid != traceID || pid == caller {
				return false, fmt.Sprintf("hop %d (%s -> %s) received traceparent %q; its caller's span is %s of trace %s",
					i, h.srcID, h.dstService, h.seenTP, caller, traceID)
			}
			caller = pid
		}
		return true, ""
	})
	t.Logf("every hop's traceparent rewritten by the waypoint %v after its rollout", time.Since(start).Round(time.Millisecond))

	// Every hop's span reaches the sink (the waypoint exports in batches,
	// at least every 5 s).
	start = time.Now()
	var spans []sinkSpan
	eventually(t, "the waypoint's spans of trace "+traceID+" in the sink", func() (bool, string) {
		out, err := e.curl(collectorSpans + "?traceId=" + traceID)
		if err != nil {
			return false, fmt.Sprint(err, out)
		}
		var rep struct {
			Received int        `json:"received"`
			Spans    []sinkSpan `json:"spans"`
		}
		if err := json.Unmarshal([]byte(out), &rep); err != nil {
			return false, fmt.Sprintf("GET /spans: %v: %.300s", err, out)
		}
		spans = rep.Spans
		return len(spans) >= len(hops), fmt.Sprintf("%d spans of the trace, want %d; %d received in all; the trace's: %s; the apps received %s",
			len(spans), len(hops), rep.Received, describeSpans(spans), describeHops(hops))
	})
	t.Logf("%d spans of the trace in the sink %v after the request", len(spans), time.Since(start).Round(time.Millisecond))

	parent := parentID
	for i, h := range hops {
		_, seenSpan, _ := parseTraceparent(h.seenTP)
		s, ok := spanWithParent(spans, parent)
		if !ok {
			t.Fatalf("hop %d (%s -> %s): no span with parent %s among %+v", i, h.srcID, h.dstService, parent, spans)
		}
		if why := h.check(s, seenSpan); why != "" {
			t.Errorf("hop %d (%s -> %s): span %+v: %s", i, h.srcID, h.dstService, s, why)
		}
		parent = s.SpanID
	}
}

// chainHops reads the traceparents curl → frontend → reviews → ratings
// received from frontend's reply.
func chainHops(reply string) ([]hop, error) {
	hops := []hop{
		{srcID: curlID, srcWorkload: "curl-", dstID: frontendID, dstService: "frontend.shop.svc.", dstWorkload: "frontend-v1-"},
		{srcID: frontendID, srcWorkload: "frontend-v1-", dstID: reviewsID, dstService: "reviews", dstWorkload: "reviews-v"},
		{srcID: reviewsID, srcWorkload: "reviews-v", dstID: ratingsID, dstService: "ratings.shop.svc.", dstWorkload: "ratings-v1-"},
	}
	body := json.RawMessage(reply)
	for i := range hops {
		var r tracedReply
		if err := json.Unmarshal(body, &r); err != nil {
			return nil, fmt.Errorf("hop %d reply: %v: %.300s", i, err, body)
		}
		hops[i].seenTP = r.TraceParent
		if i+1 < len(hops) {
			if len(r.Upstreams) != 1 {
				return nil, fmt.Errorf("%s replied with %d upstreams, want 1", r.Service, len(r.Upstreams))
			}
			body = r.Upstreams[0].Body
		}
	}
	return hops, nil
}

// check says what is wrong with s as the waypoint's span of h, whose
// callee received a traceparent naming span seenSpan ("" if none is).
func (h hop) check(s sinkSpan, seenSpan string) string {
	var bad []string
	if s.SpanID != seenSpan {
		bad = append(bad, fmt.Sprintf("the callee's traceparent names span %q, not this one", seenSpan))
	}
	if s.Name != "GET" || s.Kind != "SERVER" || s.Service != waypointService || s.Status == "ERROR" {
		bad = append(bad, fmt.Sprintf("name %q kind %q service %q status %q, want GET SERVER %s not ERROR", s.Name, s.Kind, s.Service, s.Status, waypointService))
	}
	a := s.Attributes
	for k, v := range map[string]string{
		"mesh.source.principal":      h.srcID,
		"mesh.source.namespace":      "shop",
		"mesh.destination.principal": h.dstID,
		"mesh.destination.namespace": "shop",
		"http.request.method":        "GET",
		"http.response.status_code":  "200",
		"mesh.response_flags":        "-",
	} {
		if a[k] != v {
			bad = append(bad, fmt.Sprintf("%s=%q, want %q", k, a[k], v))
		}
	}
	for k, prefix := range map[string]string{
		"mesh.source.workload":      h.srcWorkload,
		"mesh.destination.workload": h.dstWorkload,
		"mesh.destination.service":  h.dstService,
	} {
		if !strings.HasPrefix(a[k], prefix) {
			bad = append(bad, fmt.Sprintf("%s=%q, want %s…", k, a[k], prefix))
		}
	}
	if a["mesh.upstream.address"] == "" {
		bad = append(bad, "no mesh.upstream.address")
	}
	return strings.Join(bad, "; ")
}

// describeSpans is a short account of spans for a failure message.
func describeSpans(spans []sinkSpan) string {
	var b strings.Builder
	for _, s := range spans {
		fmt.Fprintf(&b, "[%s parent %s: %s %s -> %s %s] ", s.SpanID, s.ParentSpanID, s.Name,
			s.Attributes["mesh.source.workload"], s.Attributes["mesh.destination.service"], s.Attributes["http.response.status_code"])
	}
	return b.String()
}

func describeHops(hops []hop) string {
	var b strings.Builder
	for _, h := range hops {
		fmt.Fprintf(&b, "[%s: %s] ", strings.TrimSuffix(h.dstWorkload, "-"), h.seenTP)
	}
	return b.String()
}

func spanWithParent(spans []sinkSpan, parent string) (sinkSpan, bool) {
	for _, s := range spans {
		if s.ParentSpanID == parent {
			return s, true
		}
	}
	return sinkSpan{}, false
}

// parseTraceparent splits a W3C traceparent of version 00.
func parseTraceparent(tp string) (traceID, spanID string, ok bool) {
	f := strings.Split(tp, "-")
	if len(f) != 4 || f[0] != "00" || len(f[1]) != 32 || len(f[2]) != 16 || f[3] != "01" {
		return "", "", false
	}
	return f[1], f[2], true
}

func randomHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// rolloutStatus waits for kubectl rollout status of obj.
func (e *env) rolloutStatus(t *testing.T, ns, obj string) {
	t.Helper()
	if out, err := e.run(waitTimeout, e.kubectlBin, "-n", ns, "rollout", "status", obj, "--timeout="+waitTimeout.String()); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
}

// containerArgs are the args of the first container of a Deployment.
func (e *env) containerArgs(t *testing.T, ns, deploy string) ([]string, error) {
	t.Helper()
	out, err := e.kubectl("get", "deploy", deploy, "-n", ns, "-o", "jsonpath={.spec.template.spec.containers[0].args}")
	if err != nil {
		return nil, err
	}
	var args []string
	if err := json.Unmarshal([]byte(out), &args); err != nil {
		return nil, fmt.Errorf("deploy/%s args %q: %v", deploy, out, err)
	}
	return args, nil
}

func (e *env) istiodArgs(t *testing.T) []string {
	t.Helper()
	args, err := e.containerArgs(t, "istio-system", "istiod-lite")
	if err != nil {
		t.Fatal(err)
	}
	return args
}

// patchIstiod applies a JSON patch to istiod-lite's Deployment, as a user
// does with kubectl patch.
func (e *env) patchIstiod(t *testing.T, ops []map[string]any) {
	t.Helper()
	patch, _ := json.Marshal(ops)
	e.mustKubectl(t, "patch", "deploy/istiod-lite", "-n", "istio-system", "--type=json", "-p", string(patch))
}

// waitIstiodRollout waits for istiod-lite's rollout and for the old pod to
// be gone: until then it also renders the waypoints, with its own args.
func (e *env) waitIstiodRollout(t *testing.T) {
	t.Helper()
	e.rolloutStatus(t, "istio-system", "deploy/istiod-lite")
	e.waitPodsGone(t, "istio-system", "app=istiod-lite", 1)
}

// waitPodsGone waits until n pods of ns match selector, terminating ones
// included: after a rollout, until the old pods are gone.
func (e *env) waitPodsGone(t *testing.T, ns, selector string, n int) {
	t.Helper()
	eventually(t, fmt.Sprintf("%d pods %s in %s, the old ones gone", n, selector, ns), func() (bool, string) {
		out, err := e.kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "jsonpath={.items[*].metadata.name}")
		return err == nil && len(strings.Fields(out)) == n, fmt.Sprint(out, err)
	})
}

// waitWaypointArgs waits until istiod-lite has re-rendered the waypoint
// Deployment with (or without) --otlp-endpoint, its rollout is done and
// the old pod gone (while it drains, connections opened before still go
// through it).
func (e *env) waitWaypointArgs(t *testing.T, tracing bool) {
	t.Helper()
	want := []string{"--otlp-endpoint=" + collectorEndpoint, "--otlp-insecure", "--trace-sampling=100"}
	eventually(t, fmt.Sprintf("the waypoint Deployment rendered with tracing %v", tracing), func() (bool, string) {
		args, err := e.containerArgs(t, "shop", "waypoint")
		if err != nil {
			return false, err.Error()
		}
		has := 0
		for _, w := range want {
			if slices.Contains(args, w) {
				has++
			}
		}
		traced := slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--otlp-") || strings.HasPrefix(a, "--trace-") })
		if tracing {
			return has == len(want), fmt.Sprintf("args %q", args)
		}
		return !traced, fmt.Sprintf("args %q", args)
	})
	e.rolloutStatus(t, "shop", "deploy/waypoint")
	e.waitPodsGone(t, "shop", "gateway.networking.k8s.io/gateway-name=waypoint", 1)
}

// restoreIstiodArgs puts istiod-lite's args back, waits for its rollout and
// the waypoint's without tracing, and removes the trace sink.
func (e *env) restoreIstiodArgs(t *testing.T, orig []string) {
	start := time.Now()
	e.patchIstiod(t, []map[string]any{{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": orig}})
	e.waitIstiodRollout(t)
	e.waitWaypointArgs(t, false)
	if out, err := e.kubectl("delete", "-k", collectorDir, "--wait=false"); err != nil {
		t.Errorf("%v\n%s", err, out)
	}
	t.Logf("istiod-lite's args restored, waypoint without tracing %v after the patch", time.Since(start).Round(time.Millisecond))
}
