package controlplane

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/istiod-lite/translate"
)

// topology is the population: Namespaces × ServicesPerNS services, each
// with PodsPerService pods, spread round-robin over Nodes.
type topology struct {
	Namespaces, ServicesPerNS, PodsPerService, Nodes int
}

func (t topology) pods() int     { return t.Namespaces * t.ServicesPerNS * t.PodsPerService }
func (t topology) services() int { return t.Namespaces * t.ServicesPerNS }

// podRef names one pod of the population.
type podRef struct {
	ns, svc, name string
	node          int
	ip            string
}

func (t topology) nsName(n int) string { return fmt.Sprintf("bench-%d", n) }

// podAt returns the g-th pod (0 ≤ g < pods()).
func (t topology) podAt(g int) podRef {
	perNS := t.ServicesPerNS * t.PodsPerService
	n, rest := g/perNS, g%perNS
	s, k := rest/t.PodsPerService, rest%t.PodsPerService
	return podRef{
		ns:   t.nsName(n),
		svc:  fmt.Sprintf("svc-%d", s),
		name: fmt.Sprintf("svc-%d-%d", s, k),
		node: g % t.Nodes,
		ip:   fmt.Sprintf("10.%d.%d.%d", 128+g/(250*250), g/250%250, g%250+1),
	}
}

func (p podRef) uid() string { return translate.WorkloadUID("Kubernetes", p.ns, p.name) }

func nodeName(i int) string { return fmt.Sprintf("node-%d", i) }

// Client-side rate limits for populating the cluster.
const (
	setupQPS         = 3000
	setupBurst       = 6000
	setupConcurrency = 48
)

// kubeClient returns a clientset for c with raised rate limits.
func kubeClient(b *testing.B, c *kubetest.Cluster) *kubernetes.Clientset {
	b.Helper()
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		b.Fatal(err)
	}
	rc.QPS, rc.Burst = setupQPS, setupBurst
	kc, err := kubernetes.NewForConfig(rc)
	if err != nil {
		b.Fatal(err)
	}
	return kc
}

// populate creates the istio-system namespace and the ztunnel
// ServiceAccount, the nodes, the ambient namespaces (each with a
// ServiceAccount "app"), the services and the pods, and reports every pod
// Running and Ready with its IP through the status subresource (no kubelet
// runs).
func populate(ctx context.Context, b *testing.B, kc *kubernetes.Clientset, topo topology) {
	b.Helper()
	must := func(_ any, err error) {
		b.Helper()
		if err != nil {
			b.Fatal(err)
		}
	}
	must(kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "istio-system"}}, metav1.CreateOptions{}))
	must(kc.CoreV1().ServiceAccounts("istio-system").Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "ztunnel"}}, metav1.CreateOptions{}))
	for i := range topo.Nodes {
		must(kc.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: nodeName(i)}}, metav1.CreateOptions{}))
	}
	for n := range topo.Namespaces {
		ns := topo.nsName(n)
		must(kc.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{
			Name: ns, Labels: map[string]string{translate.LabelDataplaneMode: translate.DataplaneModeAmbient},
		}}, metav1.CreateOptions{}))
		must(kc.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app"}}, metav1.CreateOptions{}))
		for s := range topo.ServicesPerNS {
			name := fmt.Sprintf("svc-%d", s)
			must(kc.CoreV1().Services(ns).Create(ctx, &corev1.Service{
				ObjectMeta: metav1.ObjectMeta{Name: name},
				Spec: corev1.ServiceSpec{
					Selector: map[string]string{"app": name},
					Ports: []corev1.ServicePort{
						{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
						{Name: "grpc", Port: 9090, TargetPort: intstr.FromInt32(9090), Protocol: corev1.ProtocolTCP},
					},
				},
			}, metav1.CreateOptions{}))
		}
	}

	start := time.Now()
	next := atomic.Int64{}
	var wg sync.WaitGroup
	errc := make(chan error, setupConcurrency)
	for range setupConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				g := int(next.Add(1) - 1)
				if g >= topo.pods() {
					return
				}
				if err := createPod(ctx, kc, topo.podAt(g)); err != nil {
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		b.Fatal(err)
	}
	b.Logf("populated %d namespaces, %d services, %d pods on %d nodes in %v",
		topo.Namespaces, topo.services(), topo.pods(), topo.Nodes, time.Since(start).Round(time.Millisecond))
}

// createPod creates p and sets its status to Running, Ready, with its IP.
func createPod(ctx context.Context, kc *kubernetes.Clientset, p podRef) error {
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: p.name, Namespace: p.ns,
			Labels: map[string]string{"app": p.svc, translate.LabelCanonicalRevision: "v0"},
		},
		Spec: corev1.PodSpec{
			NodeName:                     nodeName(p.node),
			ServiceAccountName:           "app",
			AutomountServiceAccountToken: new(false),
			Containers:                   []corev1.Container{{Name: "app", Image: "app"}},
		},
	}
	created, err := kc.CoreV1().Pods(p.ns).Create(ctx, pod, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create pod %s/%s: %w", p.ns, p.name, err)
	}
	created.Status = runningStatus(p.ip, true)
	if _, err := kc.CoreV1().Pods(p.ns).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("status of pod %s/%s: %w", p.ns, p.name, err)
	}
	return nil
}

func runningStatus(ip string, ready bool) corev1.PodStatus {
	cond := corev1.ConditionTrue
	if !ready {
		cond = corev1.ConditionFalse
	}
	return corev1.PodStatus{
		Phase:      corev1.PodRunning,
		PodIP:      ip,
		PodIPs:     []corev1.PodIP{{IP: ip}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: cond}},
	}
}

// ztunnelToken returns a token of istio-system/ztunnel for audience
// istio-ca, as the kubelet projects it into ztunnel's pod.
func ztunnelToken(ctx context.Context, b *testing.B, kc *kubernetes.Clientset) string {
	b.Helper()
	exp := int64(2 * 3600)
	tr, err := kc.CoreV1().ServiceAccounts("istio-system").CreateToken(ctx, "ztunnel", &authv1.TokenRequest{
		Spec: authv1.TokenRequestSpec{Audiences: []string{"istio-ca"}, ExpirationSeconds: &exp},
	}, metav1.CreateOptions{})
	if err != nil {
		b.Fatal(err)
	}
	return tr.Status.Token
}
