package kubetest

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/ambientmesh/ambient/internal/controlplane"
)

// objectList is the part of a kubectl -o json list these tests read.
type objectList struct {
	Items []struct {
		Metadata struct {
			Name            string `json:"name"`
			OwnerReferences []struct {
				Kind string `json:"kind"`
				Name string `json:"name"`
			} `json:"ownerReferences"`
		} `json:"metadata"`
		Status struct {
			Phase string `json:"phase"`
		} `json:"status"`
	} `json:"items"`
}

// checkStopped stops c and checks that no process it started, nor anything
// in their process groups, is left.
func checkStopped(t *testing.T, c *Cluster) {
	t.Helper()
	pids := c.Pids()
	if len(pids) == 0 {
		t.Fatal("no processes recorded")
	}
	c.Stop()
	for _, pid := range pids {
		if !controlplane.GroupGone(pid) {
			t.Errorf("process group %d still has processes after Stop", pid)
		}
	}
}

func TestStart_APIServerServesNamespaces(t *testing.T) {
	c := Start(t, Options{})
	if _, err := c.Kubectl("create", "namespace", "shop"); err != nil {
		t.Fatal(err)
	}
	out, err := c.Kubectl("get", "ns", "shop", "-o", "json")
	if err != nil {
		t.Fatal(err)
	}
	var ns struct {
		Kind     string `json:"kind"`
		Metadata struct {
			Name string `json:"name"`
			UID  string `json:"uid"`
		} `json:"metadata"`
		Status struct {
			Phase string `json:"phase"`
		} `json:"status"`
	}
	if err := json.Unmarshal(out, &ns); err != nil {
		t.Fatalf("parse kubectl output: %v\n%s", err, out)
	}
	if ns.Kind != "Namespace" || ns.Metadata.Name != "shop" || ns.Metadata.UID == "" || ns.Status.Phase != "Active" {
		t.Errorf("namespace = %+v, want an Active Namespace shop with a uid", ns)
	}

	// The same object over plain HTTPS with the CA and admin token.
	resp, err := c.HTTPClient().Get(c.Server + "/api/v1/namespaces/shop")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), ns.Metadata.UID) {
		t.Errorf("GET namespace: %s %s", resp.Status, body)
	}

	// Without the token the request is anonymous and RBAC refuses it.
	hc := controlplane.HTTPClient(c.CAData, "")
	hc.Transport = hc.Transport.(interface{ Unwrap() http.RoundTripper }).Unwrap()
	resp, err = hc.Get(c.Server + "/api/v1/namespaces/shop")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden && resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("anonymous GET namespace: %s, want 401 or 403", resp.Status)
	}

	checkStopped(t, c)
}

const deployment = `apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: example.invalid/web:1
`

func TestStart_ControllerManagerCreatesReplicaSetAndPod(t *testing.T) {
	c := Start(t, Options{ControllerManager: true, Scheduler: true, ClusterCIDR: "10.244.0.0/16"})
	if err := c.ApplyYAML(deployment); err != nil {
		t.Fatal(err)
	}

	var rs, pods objectList
	waitFor(t, 60*time.Second, func() bool {
		return getList(t, c, &rs, "replicasets") && len(rs.Items) == 1 &&
			getList(t, c, &pods, "pods") && len(pods.Items) == 1
	})
	if o := rs.Items[0].Metadata.OwnerReferences; len(o) != 1 || o[0].Kind != "Deployment" || o[0].Name != "web" {
		t.Errorf("replicaset owners = %+v, want Deployment web", o)
	}
	if o := pods.Items[0].Metadata.OwnerReferences; len(o) != 1 || o[0].Kind != "ReplicaSet" || o[0].Name != rs.Items[0].Metadata.Name {
		t.Errorf("pod owners = %+v, want ReplicaSet %s", o, rs.Items[0].Metadata.Name)
	}
	if phase := pods.Items[0].Status.Phase; phase != "Pending" {
		t.Errorf("pod phase = %q, want Pending (there are no nodes)", phase)
	}

	// The service-account and root-CA publisher controllers fill the namespace.
	waitFor(t, 30*time.Second, func() bool {
		_, err1 := c.Kubectl("-n", "shop", "get", "serviceaccount", "default")
		_, err2 := c.Kubectl("-n", "shop", "get", "configmap", "kube-root-ca.crt")
		return err1 == nil && err2 == nil
	})
	// A token for it is signed with the cluster's service-account key.
	tok, err := c.Kubectl("-n", "shop", "create", "token", "default")
	if err != nil {
		t.Fatal(err)
	}
	if parts := strings.Split(strings.TrimSpace(string(tok)), "."); len(parts) != 3 {
		t.Errorf("token = %q, want a JWT", tok)
	}

	// With ClusterCIDR the node-ipam controller gives a Node a pod CIDR.
	if err := c.ApplyYAML("apiVersion: v1\nkind: Node\nmetadata:\n  name: node-a\n"); err != nil {
		t.Fatal(err)
	}
	var podCIDR []byte
	waitFor(t, 30*time.Second, func() bool {
		podCIDR, err = c.Kubectl("get", "node", "node-a", "-o", "jsonpath={.spec.podCIDR}")
		return err == nil && len(podCIDR) > 0
	})
	if !strings.HasPrefix(string(podCIDR), "10.244.") {
		t.Errorf("node-a podCIDR = %q, want one in 10.244.0.0/16", podCIDR)
	}

	checkStopped(t, c)
}

// getList runs kubectl get kind -n shop -o json into l; false on error.
func getList(t *testing.T, c *Cluster, l *objectList, kind string) bool {
	out, err := c.Kubectl("-n", "shop", "get", kind, "-o", "json")
	if err != nil {
		t.Log(err)
		return false
	}
	*l = objectList{}
	if err := json.Unmarshal(out, l); err != nil {
		t.Fatalf("parse %s: %v\n%s", kind, err, out)
	}
	return true
}

// waitFor polls cond every half second until it holds or timeout passes.
func waitFor(t *testing.T, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("condition not met after %v", timeout)
		}
		time.Sleep(500 * time.Millisecond)
	}
}
