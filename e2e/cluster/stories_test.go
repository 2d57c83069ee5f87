package cluster

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// Identities of the sample app (manifests/samples/shop).
const (
	curlID    = "spiffe://cluster.local/ns/shop/sa/curl"
	ratingsID = "spiffe://cluster.local/ns/shop/sa/ratings"
)

// TestUserStories runs the user stories one after the other on one
// cluster; each step needs the ones before it, so the first failure ends
// the test.
func TestUserStories(t *testing.T) {
	e := upCluster(t)
	for _, s := range []struct {
		name string
		fn   func(*testing.T)
	}{
		{"InstallWithKubectlApply", e.installMesh},
		{"SampleAppInPlaintextBeforeAmbient", e.plaintextBeforeAmbient},
		{"EnableTurnsTrafficIntoMTLSWithoutRestarts", e.enableTurnsTrafficIntoMTLS},
		{"DisableBringsPlaintextBack", e.disableBringsPlaintextBack},
		{"AuthorizationPolicyEnforcedAndInFlows", e.authorizationPolicy},
		{"ScaledUpPodsCapturedDeletedPodsGone", e.scaleUpAndDelete},
		{"ZtunnelPodRestartLosesNoPod", e.ztunnelRestart},
		{"TwoIstiodReplicas_LeaderPodDeleted", e.istiodFailover},
		{"AsOnARealCluster_LogsAndPortForward", e.asOnARealCluster},
		{"WaypointCanaryWithHTTPRoute", e.waypointCanary},
		{"NamespaceSwitchedToQUICTunnels", e.tunnelOverQUIC},
		{"UDPThroughTheMesh", e.udpThroughTheMesh},
	} {
		if !t.Run(s.name, s.fn) {
			return
		}
	}
}

// installMesh applies manifests/ as a user would and waits for the
// control plane and a ztunnel and CNI installer on every node.
func (e *env) installMesh(t *testing.T) {
	e.mustKubectl(t, "apply", "-k", "manifests/")
	for _, obj := range []string{"deploy/istiod-lite", "ds/ztunnel", "ds/ambient-cni-node"} {
		if out, err := e.run(waitTimeout, e.kubectlBin, "-n", "istio-system", "rollout", "status", obj, "--timeout="+waitTimeout.String()); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	nodes := strings.Fields(e.mustKubectl(t, "get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"))
	if len(nodes) != 2 {
		t.Fatalf("nodes = %v, want 2", nodes)
	}
	var ready []string
	for _, p := range e.pods(t, "istio-system", "app=ztunnel") {
		out := e.mustKubectl(t, "get", "pod", "-n", "istio-system", p.Name, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
		if out == "True" {
			ready = append(ready, p.Node)
		}
	}
	slices.Sort(ready)
	if !slices.Equal(ready, nodes) {
		t.Fatalf("ztunnel Ready on %v, want every node %v", ready, nodes)
	}
	// The installer chained ambient-cni into each node's network
	// configuration, which the node agent uses for every new pod.
	for _, n := range nodes {
		conf := e.stateDir + "/nodes/" + n + "/root/etc/cni/net.d/10-ambient-pods.conflist"
		eventually(t, "ambient-cni chained on "+n, func() (bool, string) {
			b, err := readFile(conf)
			return err == nil && strings.Contains(b, `"ambient-cni"`), fmt.Sprintf("%s: %v %s", conf, err, b)
		})
	}

	e.mustKubectl(t, "apply", "-k", "manifests/samples/shop/")
	for _, d := range []string{"frontend-v1", "reviews-v1", "reviews-v2", "ratings-v1", "curl"} {
		if out, err := e.run(waitTimeout, e.kubectlBin, "-n", "shop", "rollout", "status", "deploy/"+d, "--timeout="+waitTimeout.String()); err != nil {
			t.Fatalf("%v\n%s", err, out)
		}
	}
	// Real pod IPs from each node's pod CIDR, shown by kubectl get -o wide.
	wide := e.mustKubectl(t, "get", "pods", "-A", "-o", "wide")
	t.Logf("kubectl get pods -A -o wide:\n%s", wide)
	podCIDR := netip.MustParsePrefix("10.244.0.0/16")
	for _, p := range e.pods(t, "shop", "app") {
		ip, err := netip.ParseAddr(p.IP)
		if err != nil || !podCIDR.Contains(ip) || !strings.Contains(wide, p.IP) {
			t.Errorf("pod %s: IP %q not a pod IP shown by kubectl get -o wide", p.Name, p.IP)
		}
	}
}

// plaintextBeforeAmbient: the app works and its requests cross the wire
// readable, and no ztunnel handles them.
func (e *env) plaintextBeforeAmbient(t *testing.T) {
	// kube-proxy programs the new Services' endpoints within moments.
	eventually(t, "curl -> frontend -> reviews -> ratings", func() (bool, string) {
		out, err := e.curl("http://frontend:8080/")
		return err == nil && reachedRatings(out), fmt.Sprint(err, out)
	})
	ratings := e.onePod(t, "shop", "app=ratings")
	marker := fmt.Sprintf("plain-%d", time.Now().UnixNano())
	pkts := capture(t, ratings, func() {
		if out, err := e.curl("http://ratings:8080/?" + marker); err != nil {
			t.Fatalf("curl ratings: %v\n%s", err, out)
		}
	})
	if !carries(pkts, 8080, marker) {
		t.Errorf("the request did not reach ratings in plaintext on port 8080 (%d packets on its eth0)", len(pkts))
	}
	if f, ok := findFlow(e.mustFlows(t), func(f flow) bool { return f.SrcID != "" }); ok {
		t.Errorf("a ztunnel recorded mTLS traffic before ambient mode: %+v", f)
	}
}

// enableTurnsTrafficIntoMTLS: `ambientctl ambient enable` and, with no
// pod restarted, requests arrive over HBONE and the server side's flow
// carries the caller's identity.
func (e *env) enableTurnsTrafficIntoMTLS(t *testing.T) {
	before := e.pods(t, "shop", "app")
	e.mustAmbientctl(t, "ambient", "enable", "-n", "shop")
	ratings := e.onePod(t, "shop", "app=ratings")
	took := e.waitMTLS(t, ratings)
	t.Logf("mTLS %v after ambientctl ambient enable", took.Round(time.Millisecond))
	after := e.pods(t, "shop", "app")
	if len(after) != len(before) {
		t.Fatalf("pods changed: %+v -> %+v", before, after)
	}
	for i := range before {
		if before[i].UID != after[i].UID || after[i].Restarts != before[i].Restarts {
			t.Errorf("pod %s restarted or replaced: %+v -> %+v", before[i].Name, before[i], after[i])
		}
	}
	// The call chain works in the mesh too.
	if out, err := e.curl("http://frontend:8080/"); err != nil || !reachedRatings(out) {
		t.Fatalf("curl frontend in the mesh: %v\n%s", err, out)
	}
}

// waitMTLS waits until a request from curl to p travels as HBONE only and
// p's ztunnel records it with curl's identity.
func (e *env) waitMTLS(t *testing.T, p pod) time.Duration {
	t.Helper()
	return eventually(t, "curl -> "+p.Name+" over mTLS", func() (bool, string) {
		marker := fmt.Sprintf("mtls-%d", time.Now().UnixNano())
		var cerr error
		pkts := capture(t, p, func() { _, cerr = e.curl("http://" + p.IP + ":8080/?" + marker) })
		switch {
		case cerr != nil:
			return false, cerr.Error()
		case carries(pkts, 8080, marker):
			return false, "still plaintext on the wire"
		case !sentTo(pkts, 15008):
			return false, "nothing sent to 15008"
		}
		return e.hasFlow(t, func(f flow) bool {
			return f.Reporter == "destination" && f.DstWork == p.Name && f.SrcID == curlID && f.Transport == "hbone" && f.Decision == "allow"
		})
	})
}

// disableBringsPlaintextBack: `disable` returns the namespace to
// plaintext; then ambient mode goes back on for the next stories.
func (e *env) disableBringsPlaintextBack(t *testing.T) {
	e.mustAmbientctl(t, "ambient", "disable", "-n", "shop")
	ratings := e.onePod(t, "shop", "app=ratings")
	eventually(t, "plaintext after disable", func() (bool, string) {
		marker := fmt.Sprintf("plain-again-%d", time.Now().UnixNano())
		var cerr error
		pkts := capture(t, ratings, func() { _, cerr = e.curl("http://ratings:8080/?" + marker) })
		if cerr != nil {
			return false, cerr.Error()
		}
		return carries(pkts, 8080, marker) && !sentTo(pkts, 15008), "not plaintext yet"
	})
	e.mustAmbientctl(t, "ambient", "enable", "-n", "shop")
	e.waitMTLS(t, ratings)
}

// authorizationPolicy: Istio's documented ALLOW-by-principal policy,
// applied with kubectl, refuses curl within seconds, keeps the reviews ->
// ratings hop working, and the denial is in the flows with both
// identities.
func (e *env) authorizationPolicy(t *testing.T) {
	start := time.Now()
	e.mustKubectl(t, "apply", "-f", "manifests/samples/shop/policies/ratings-viewer.yaml")
	eventually(t, "curl -> ratings denied", func() (bool, string) {
		out, err := e.curl("http://ratings:8080/")
		return err != nil, "still allowed: " + out
	})
	t.Logf("policy enforced %v after kubectl apply", time.Since(start).Round(time.Millisecond))
	// reviews, the one allowed caller, still reaches ratings.
	if out, err := e.curl("http://frontend:8080/"); err != nil || !reachedRatings(out) {
		t.Errorf("frontend -> reviews -> ratings refused under the policy: %v\n%s", err, out)
	}
	eventually(t, "the denial in ambientctl flows", func() (bool, string) {
		return e.hasFlow(t, func(f flow) bool {
			return f.Decision == "deny" && f.SrcID == curlID && f.DstID == ratingsID
		})
	})
	table := e.mustAmbientctl(t, "flows", "-n", "shop")
	if !strings.Contains(table, "deny") || !strings.Contains(table, curlID) {
		t.Errorf("ambientctl flows -n shop does not show the denial:\n%s", table)
	}
	e.mustKubectl(t, "delete", "-f", "manifests/samples/shop/policies/ratings-viewer.yaml")
	eventually(t, "curl -> ratings allowed again", func() (bool, string) {
		out, err := e.curl("http://ratings:8080/")
		return err == nil, fmt.Sprint(err, out)
	})
}

// scaleUpAndDelete: a pod added by scaling a Deployment is in the mesh
// without anyone doing anything; a deleted pod leaves the ztunnels' view.
func (e *env) scaleUpAndDelete(t *testing.T) {
	old := e.onePod(t, "shop", "app=reviews,version=v1")
	e.mustKubectl(t, "scale", "-n", "shop", "deploy/reviews-v1", "--replicas=2")
	if out, err := e.run(waitTimeout, e.kubectlBin, "-n", "shop", "rollout", "status", "deploy/reviews-v1", "--timeout="+waitTimeout.String()); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var added pod
	for _, p := range e.pods(t, "shop", "app=reviews,version=v1") {
		if p.UID != old.UID {
			added = p
		}
	}
	if added.Name == "" {
		t.Fatal("no new reviews-v1 pod")
	}
	eventually(t, added.Name+" in zc workloads as HBONE", func() (bool, string) {
		w, ok := e.workload(t, added.Name)
		return ok && w.Protocol == "HBONE" && slices.Contains(w.IPs, added.IP), fmt.Sprintf("%+v", w)
	})
	e.waitMTLS(t, added)

	e.mustKubectl(t, "delete", "pod", "-n", "shop", old.Name, "--wait=true", "--timeout=60s")
	eventually(t, old.Name+" gone from zc workloads", func() (bool, string) {
		_, ok := e.workload(t, old.Name)
		return !ok, "still listed"
	})
	e.mustKubectl(t, "scale", "-n", "shop", "deploy/reviews-v1", "--replicas=1")
}

// workloadView is a row of `ambientctl zc workloads -o json`.
type workloadView struct {
	Name     string   `json:"name"`
	IPs      []string `json:"workloadIps"`
	Protocol string   `json:"protocol"`
	Node     string   `json:"node"`
}

func (e *env) workload(t *testing.T, name string) (workloadView, bool) {
	t.Helper()
	out, err := e.ambientctl("zc", "workloads", "-n", "shop", "-o", "json")
	if err != nil {
		t.Logf("zc workloads: %v", err)
		return workloadView{}, false
	}
	var ws []workloadView
	if err := json.Unmarshal([]byte(out), &ws); err != nil {
		t.Fatalf("zc workloads -o json: %v\n%s", err, out)
	}
	for _, w := range ws {
		if w.Name == name {
			return w, true
		}
	}
	return workloadView{}, false
}

// ztunnelRestart deletes the ztunnel pod of the node running ratings:
// requests retried through the restart get through, and every enrolled
// pod of that node is served over mTLS by the replacement.
func (e *env) ztunnelRestart(t *testing.T) {
	ratings := e.onePod(t, "shop", "app=ratings")
	var old pod
	for _, z := range e.pods(t, "istio-system", "app=ztunnel") {
		if z.Node == ratings.Node {
			old = z
		}
	}
	if old.Name == "" {
		t.Fatalf("no ztunnel on %s", ratings.Node)
	}
	e.mustKubectl(t, "delete", "pod", "-n", "istio-system", old.Name, "--wait=false")
	// A client retrying through the restart.
	retried := eventually(t, "curl -> ratings through the restart", func() (bool, string) {
		out, err := e.curl("http://ratings:8080/")
		return err == nil, fmt.Sprint(err, out)
	})
	t.Logf("first success %v after the delete", retried.Round(time.Millisecond))
	if out, err := e.run(waitTimeout, e.kubectlBin, "-n", "istio-system", "rollout", "status", "ds/ztunnel", "--timeout="+waitTimeout.String()); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	var replacement pod
	for _, z := range e.pods(t, "istio-system", "app=ztunnel") {
		if z.Node == ratings.Node {
			replacement = z
		}
	}
	if replacement.UID == old.UID || replacement.Name == "" {
		t.Fatalf("ztunnel on %s not replaced: %+v", ratings.Node, replacement)
	}
	for _, p := range e.pods(t, "shop", "app") {
		if p.Node == ratings.Node && p.Name != "" && !strings.HasPrefix(p.Name, "curl") {
			e.waitMTLS(t, p)
		}
	}
}

// istiodFailover scales istiod-lite to two replicas, both Ready, one
// holding the Lease; deleting the holder's pod hands the Lease to another
// replica, whose writers publish the root in a new namespace and whose xDS
// keeps the mesh going. It scales back to one replica at the end.
func (e *env) istiodFailover(t *testing.T) {
	e.mustKubectl(t, "scale", "-n", "istio-system", "deploy/istiod-lite", "--replicas=2")
	if out, err := e.run(waitTimeout, e.kubectlBin, "-n", "istio-system", "rollout", "status", "deploy/istiod-lite", "--timeout="+waitTimeout.String()); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// The holder's identity is its pod's name ($POD_NAME).
	holderPod := func() string {
		out, _ := e.kubectl("get", "lease", "-n", "istio-system", "istiod-lite-leader", "-o", "jsonpath={.spec.holderIdentity}")
		return strings.TrimSpace(out)
	}
	replicas := e.pods(t, "istio-system", "app=istiod-lite")
	var leaderPod string
	eventually(t, "one of the two istiod-lite pods holding the Lease", func() (bool, string) {
		leaderPod = holderPod()
		return slices.ContainsFunc(replicas, func(p pod) bool { return p.Name == leaderPod }), fmt.Sprintf("holder %q, pods %+v", leaderPod, replicas)
	})

	e.mustKubectl(t, "delete", "pod", "-n", "istio-system", leaderPod, "--wait=true", "--timeout=60s")
	took := eventually(t, "another istiod-lite pod holding the Lease", func() (bool, string) {
		h := holderPod()
		return h != "" && h != leaderPod, "holder " + h
	})
	t.Logf("Lease handed over %v after the leader pod was gone", took.Round(time.Millisecond))
	e.mustKubectl(t, "create", "namespace", "failover")
	eventually(t, "the root ConfigMap in a namespace created after the failover", func() (bool, string) {
		out, err := e.kubectl("get", "configmap", "-n", "failover", "istio-ca-root-cert", "-o", `jsonpath={.data.root-cert\.pem}`)
		return err == nil && strings.Contains(out, "BEGIN CERTIFICATE"), fmt.Sprint(err, out)
	})
	e.mustKubectl(t, "delete", "namespace", "failover", "--wait=false")
	if out, err := e.run(waitTimeout, e.kubectlBin, "-n", "istio-system", "rollout", "status", "deploy/istiod-lite", "--timeout="+waitTimeout.String()); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	// The mesh still works: every app pod's traffic is mTLS.
	for _, p := range e.pods(t, "shop", "app") {
		if !strings.HasPrefix(p.Name, "curl") {
			e.waitMTLS(t, p)
		}
	}
	e.mustKubectl(t, "scale", "-n", "istio-system", "deploy/istiod-lite", "--replicas=1")
	eventually(t, "one istiod-lite pod, holding the Lease", func() (bool, string) {
		ps := e.pods(t, "istio-system", "app=istiod-lite")
		return len(ps) == 1 && holderPod() == ps[0].Name, fmt.Sprintf("pods %+v, holder %q", ps, holderPod())
	})
}

// asOnARealCluster uses the paths a real cluster offers, with no local
// cluster-state file: kubectl logs of the ztunnels (their flow log is
// their stdout), and ambientctl reaching every ztunnel's admin port through
// the API server's port-forward.
func (e *env) asOnARealCluster(t *testing.T) {
	logs := e.mustKubectl(t, "logs", "-n", "istio-system", "-l", "app=ztunnel", "--tail=-1", "--max-log-requests=4")
	if !strings.Contains(logs, "ztunnel started") || !strings.Contains(logs, curlID) {
		t.Errorf("kubectl logs of the ztunnels lack the start line or curl's flows:\n%.2000s", logs)
	}
	noState := filepath.Join(t.TempDir(), "absent.json")
	out, err := e.runWith(noState, 3*time.Minute, filepath.Join(e.bin, "ambientctl"), "zc", "workloads", "-n", "shop", "-o", "json")
	if err != nil {
		t.Fatalf("ambientctl zc workloads through port-forward: %v\n%s", err, out)
	}
	var ws []workloadView
	if err := json.Unmarshal([]byte(out), &ws); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	pods := e.pods(t, "shop", "app")
	if len(ws) != len(pods) {
		t.Errorf("zc workloads through port-forward: %d workloads, want the %d shop pods:\n%s", len(ws), len(pods), out)
	}
	out, err = e.runWith(noState, 3*time.Minute, filepath.Join(e.bin, "ambientctl"), "flows", "-n", "shop", "--identity", curlID)
	if err != nil || !strings.Contains(out, curlID) {
		t.Errorf("ambientctl flows through port-forward: %v\n%s", err, out)
	}
}

// reachedRatings reports whether a frontend reply holds the answer of
// ratings, at the end of the call chain.
func reachedRatings(reply string) bool {
	return strings.Contains(reply, `"service": "ratings"`)
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}

// tunnelOverQUIC: annotating the namespace ambientmesh.io/tunnel-transport:
// quic moves its pods' tunnels to HBONE/3 (the flows say hbone3); removing
// the annotation brings HTTP/2 back.
func (e *env) tunnelOverQUIC(t *testing.T) {
	carried := func(transport string) func(flow) bool {
		return func(f flow) bool {
			return f.Reporter == "destination" && strings.HasPrefix(f.DstWork, "reviews-") && f.SrcID == curlID &&
				f.Transport == transport && f.Decision == "allow"
		}
	}
	count := func(m func(flow) bool) int {
		n := 0
		for _, f := range e.mustFlows(t) {
			if m(f) {
				n++
			}
		}
		return n
	}
	e.mustKubectl(t, "annotate", "namespace", "shop", "ambientmesh.io/tunnel-transport=quic", "--overwrite")
	took := eventually(t, "curl -> reviews carried over HBONE/3", func() (bool, string) {
		if out, err := e.curl("http://reviews:8080/"); err != nil {
			return false, fmt.Sprint(err, out)
		}
		return e.hasFlow(t, carried("hbone3"))
	})
	t.Logf("QUIC tunnels %v after kubectl annotate", took.Round(time.Millisecond))

	e.mustKubectl(t, "annotate", "namespace", "shop", "ambientmesh.io/tunnel-transport-")
	before := count(carried("hbone"))
	eventually(t, "curl -> reviews over HTTP/2 again", func() (bool, string) {
		if out, err := e.curl("http://reviews:8080/"); err != nil {
			return false, fmt.Sprint(err, out)
		}
		n := count(carried("hbone"))
		return n > before, fmt.Sprintf("%d HTTP/2 flows curl -> reviews, %d before", n, before)
	})
}

// udpThroughTheMesh: frontend sends a datagram to Service reviews' port
// (the sample answers UDP on its HTTP port number, and listens there
// itself); the answer comes back, reviews saw frontend's pod IP as the
// source, and reviews' ztunnel recorded a UDP flow with frontend's
// identity over mTLS — when the flow ended, after the 60 s idle timeout.
func (e *env) udpThroughTheMesh(t *testing.T) {
	frontendIPs := map[string]bool{}
	for _, p := range e.pods(t, "shop", "app=frontend") {
		frontendIPs[p.IP] = true
	}
	eventually(t, "frontend -> reviews over UDP, in the mesh", func() (bool, string) {
		out, err := e.kubectl("exec", "-n", "shop", "deploy/curl", "--", "curl", "-sS", "--max-time", "10",
			"http://frontend:8080/call?url=udp://reviews:8080")
		if err != nil {
			return false, fmt.Sprint(err, out)
		}
		var rep sampleReply
		if err := json.Unmarshal([]byte(out), &rep); err != nil || len(rep.Upstreams) != 1 {
			return false, fmt.Sprintf("frontend reply %.300s: %v", out, err)
		}
		var answer struct {
			Proto      string `json:"proto"`
			RemoteAddr string `json:"remoteAddr"`
		}
		if err := json.Unmarshal(rep.Upstreams[0].Body, &answer); err != nil || answer.Proto != "udp" {
			return false, fmt.Sprintf("reviews' UDP answer %.300s: %v", out, err)
		}
		if host, _, _ := net.SplitHostPort(answer.RemoteAddr); !frontendIPs[host] {
			return false, fmt.Sprintf("reviews saw the datagram from %s, want a frontend pod IP %v", answer.RemoteAddr, frontendIPs)
		}
		return e.hasFlow(t, func(f flow) bool {
			return f.Reporter == "destination" && f.Protocol == "udp" && strings.HasPrefix(f.DstWork, "reviews-") &&
				f.SrcID == frontendID && f.Decision == "allow" && f.Security == "mutual_tls"
		})
	})
}
