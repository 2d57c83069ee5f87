package controlplane

import (
	"fmt"
	"testing"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/ambientmesh/ambient/istiod-lite/controller"
	"github.com/ambientmesh/ambient/istiod-lite/translate"
)

// objects returns the population as the controller's informers hold it.
func objects(topo topology) controller.Input {
	in := controller.Input{RootNamespace: "istio-system"}
	for n := range topo.Namespaces {
		in.Namespaces = append(in.Namespaces, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: topo.nsName(n), Labels: map[string]string{translate.LabelDataplaneMode: translate.DataplaneModeAmbient},
		}})
		for s := range topo.ServicesPerNS {
			in.Services = append(in.Services, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", s), Namespace: topo.nsName(n)},
				Spec: corev1.ServiceSpec{
					ClusterIP: fmt.Sprintf("10.96.%d.%d", n, s+1),
					Selector:  map[string]string{"app": fmt.Sprintf("svc-%d", s)},
					Ports: []corev1.ServicePort{
						{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
						{Name: "grpc", Port: 9090, TargetPort: intstr.FromInt32(9090), Protocol: corev1.ProtocolTCP},
					},
				},
			})
		}
	}
	for g := range topo.pods() {
		p := topo.podAt(g)
		in.Pods = append(in.Pods, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: p.name, Namespace: p.ns, Labels: map[string]string{"app": p.svc, translate.LabelCanonicalRevision: "v0"}},
			Spec:       corev1.PodSpec{NodeName: nodeName(p.node), ServiceAccountName: "app", Containers: []corev1.Container{{Name: "app"}}},
			Status:     runningStatus(p.ip, true),
		})
	}
	return in
}

// BenchmarkRecompute_5000Pods is the controller's work for one change
// without the apiserver: [controller.Compute] over the whole population and
// the comparison with the previous result, by [controller.Diff] (what the
// controller does) and by proto.Equal (what it did before).
func BenchmarkRecompute_5000Pods(b *testing.B) {
	in := objects(benchTopology)
	addrs := func() map[string]proto.Message {
		out := controller.Compute(in).Addresses
		m := make(map[string]proto.Message, len(out))
		for k, v := range out {
			m[k] = v
		}
		return m
	}
	b.Run("diff=encoding", func(b *testing.B) {
		_, _, prev, err := controller.Diff(nil, addrs())
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		for b.Loop() {
			upserts, removals, enc, err := controller.Diff(prev, addrs())
			if err != nil || len(upserts) != 0 || len(removals) != 0 {
				b.Fatalf("Diff = %d upserts, %d removals, %v; want nothing", len(upserts), len(removals), err)
			}
			prev = enc
		}
	})
	b.Run("diff=proto.Equal", func(b *testing.B) {
		prev := addrs()
		b.ReportAllocs()
		for b.Loop() {
			next := addrs()
			for k, v := range next {
				if old, ok := prev[k]; !ok || !proto.Equal(old, v) {
					b.Fatalf("%s changed", k)
				}
			}
			prev = next
		}
	})
}
