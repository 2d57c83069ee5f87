package poddns

import (
	"testing"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestForPod(t *testing.T) {
	host := []byte("# host\nnameserver 10.255.255.53\nsearch corp.example\noptions edns0\n")
	cluster := Cluster{Nameservers: []string{"10.96.0.10"}, Domain: "cluster.local"}
	clusterFile := "nameserver 10.96.0.10\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:5\n"
	hostFile := "nameserver 10.255.255.53\nsearch corp.example\noptions edns0\n"
	five := "2"
	for _, tc := range []struct {
		name    string
		spec    v1.PodSpec
		cluster Cluster
		want    string
		useHost bool
		wantErr bool
	}{
		{name: "DefaultPolicyIsClusterFirst", cluster: cluster, want: clusterFile},
		{name: "ClusterFirst", spec: v1.PodSpec{DNSPolicy: v1.DNSClusterFirst}, cluster: cluster, want: clusterFile},
		{name: "ClusterFirstOnHostNetworkGetsTheNodes", spec: v1.PodSpec{DNSPolicy: v1.DNSClusterFirst, HostNetwork: true}, cluster: cluster, want: hostFile, useHost: true},
		{name: "ClusterFirstWithHostNet", spec: v1.PodSpec{DNSPolicy: v1.DNSClusterFirstWithHostNet, HostNetwork: true}, cluster: cluster, want: clusterFile},
		{name: "NoClusterDNSFallsBackToDefault", spec: v1.PodSpec{DNSPolicy: v1.DNSClusterFirst}, want: hostFile, useHost: true},
		{name: "Default", spec: v1.PodSpec{DNSPolicy: v1.DNSDefault}, cluster: cluster, want: hostFile, useHost: true},
		{name: "DefaultWithDNSConfigIsGenerated", spec: v1.PodSpec{DNSPolicy: v1.DNSDefault, DNSConfig: &v1.PodDNSConfig{Searches: []string{"a.example"}}},
			cluster: cluster, want: "nameserver 10.255.255.53\nsearch corp.example a.example\noptions edns0\n"},
		{name: "NoneUsesOnlyDNSConfig", spec: v1.PodSpec{DNSPolicy: v1.DNSNone, DNSConfig: &v1.PodDNSConfig{
			Nameservers: []string{"1.2.3.4"}, Searches: []string{"x.example"}, Options: []v1.PodDNSConfigOption{{Name: "ndots", Value: &five}, {Name: "edns0"}}}},
			cluster: cluster, want: "nameserver 1.2.3.4\nsearch x.example\noptions ndots:2 edns0\n"},
		{name: "NoneWithoutDNSConfigIsAnError", spec: v1.PodSpec{DNSPolicy: v1.DNSNone}, cluster: cluster, wantErr: true},
		{name: "ClusterFirstMergesDNSConfig", spec: v1.PodSpec{DNSConfig: &v1.PodDNSConfig{
			Nameservers: []string{"10.96.0.10", "1.1.1.1"}, Options: []v1.PodDNSConfigOption{{Name: "ndots", Value: &five}}}},
			cluster: cluster, want: "nameserver 10.96.0.10\nnameserver 1.1.1.1\nsearch shop.svc.cluster.local svc.cluster.local cluster.local corp.example\noptions ndots:2\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &v1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop"}, Spec: tc.spec}
			conf, useHost, err := ForPod(pod, tc.cluster, host)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if useHost != tc.useHost {
				t.Errorf("useHost = %v, want %v", useHost, tc.useHost)
			}
			if got := string(conf.Render()); got != tc.want {
				t.Errorf("got\n%s\nwant\n%s", got, tc.want)
			}
		})
	}
}
