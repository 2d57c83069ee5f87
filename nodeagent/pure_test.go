package nodeagent

import (
	"encoding/json"
	"net/netip"
	"slices"
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestDesiredRoutes_OtherNodesPodCIDRsViaInternalIP(t *testing.T) {
	node := func(name, ip string, cidrs ...string) *v1.Node {
		n := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: v1.NodeSpec{PodCIDRs: cidrs}}
		if ip != "" {
			n.Status.Addresses = []v1.NodeAddress{{Type: v1.NodeHostName, Address: name}, {Type: v1.NodeInternalIP, Address: ip}}
		}
		return n
	}
	got := desiredRoutes([]*v1.Node{
		node("n3", "172.30.0.3", "10.244.3.0/24", "fd00:3::/64"),
		node("n1", "172.30.0.1", "10.244.1.0/24"),
		node("n2", "172.30.0.2", "10.244.2.0/24"),
		node("n4", "", "10.244.4.0/24"),
		node("n5", "172.30.0.5"),
	}, "n1")
	want := []peerRoute{
		{CIDR: netip.MustParsePrefix("10.244.2.0/24"), Via: netip.MustParseAddr("172.30.0.2")},
		{CIDR: netip.MustParsePrefix("10.244.3.0/24"), Via: netip.MustParseAddr("172.30.0.3")},
	}
	if !slices.Equal(got, want) {
		t.Errorf("desiredRoutes = %v, want %v", got, want)
	}
}

func TestRenderConfList_DefaultChain(t *testing.T) {
	b, err := renderConfList(DefaultConfList, confListParams{PodCIDR: "10.244.1.0/24", IPAMDir: "/st/cni/ipam", NodeName: "n1", StateDir: "/st"})
	if err != nil {
		t.Fatal(err)
	}
	var conf struct {
		Name    string
		Plugins []struct {
			Type string
			IPAM struct {
				Type    string
				DataDir string
				Ranges  [][]struct{ Subnet string }
			}
		}
	}
	if err := json.Unmarshal(b, &conf); err != nil {
		t.Fatal(err)
	}
	p := conf.Plugins[0]
	if conf.Name != "ambient-pods" || p.Type != "ptp" || p.IPAM.Type != "host-local" || p.IPAM.DataDir != "/st/cni/ipam" || p.IPAM.Ranges[0][0].Subnet != "10.244.1.0/24" {
		t.Errorf("rendered %s", b)
	}
	if _, err := renderConfList(`{{.Nope}}`, confListParams{}); err == nil {
		t.Error("unknown template field accepted")
	}
	if _, err := renderConfList(`{"cniVersion":"1.0.0"}`, confListParams{}); err == nil {
		t.Error("a conflist without a name or plugins accepted")
	}
}

func TestNodeStatus_ReadyWithAddressesAndCapacity(t *testing.T) {
	cfg := Config{NodeName: "n1", NodeIP: netip.MustParseAddr("172.30.0.1"),
		Capacity: v1.ResourceList{v1.ResourcePods: resource.MustParse("110")}}
	t1, t2 := time.Unix(1000, 0), time.Unix(2000, 0)
	st := nodeStatus(v1.NodeStatus{}, cfg, t1)
	st = nodeStatus(st, cfg, t2)
	var ready *v1.NodeCondition
	for i := range st.Conditions {
		if st.Conditions[i].Type == v1.NodeReady {
			ready = &st.Conditions[i]
		}
	}
	if ready == nil || ready.Status != v1.ConditionTrue || !ready.LastHeartbeatTime.Time.Equal(t2) || !ready.LastTransitionTime.Time.Equal(t1) {
		t.Errorf("Ready %+v", ready)
	}
	if st.Addresses[0] != (v1.NodeAddress{Type: v1.NodeInternalIP, Address: "172.30.0.1"}) {
		t.Errorf("addresses %v", st.Addresses)
	}
	if q := st.Allocatable[v1.ResourcePods]; q.Value() != 110 {
		t.Errorf("allocatable %v", st.Allocatable)
	}
}
