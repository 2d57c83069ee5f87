package leader_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambientmesh/ambient/internal/kubetest"
	"github.com/ambientmesh/ambient/istiod-lite/leader"
)

const (
	ns          = "istio-system"
	waitTimeout = 30 * time.Second
)

// writers counts the lead functions running across every replica of a
// test; two at once would be two writers.
type writers struct {
	running, max atomic.Int32
	terms        atomic.Int32
}

// lead runs until its context ends, noting who leads.
func (w *writers) lead(ctx context.Context) error {
	w.terms.Add(1)
	n := w.running.Add(1)
	for m := w.max.Load(); n > m && !w.max.CompareAndSwap(m, n); m = w.max.Load() {
	}
	<-ctx.Done()
	w.running.Add(-1)
	return nil
}

// replica is one elector running in the background.
type replica struct {
	e      *leader.Elector
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, kube kubernetes.Interface, id string, lead func(context.Context) error) *replica {
	t.Helper()
	e, err := leader.New(leader.Config{Client: kube, Namespace: ns, Identity: id,
		LeaseDuration: 3 * time.Second, RenewDeadline: 2 * time.Second, RetryPeriod: 200 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(tWriter{t}, nil)).With("replica", id)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &replica{e: e, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- e.Run(ctx, lead) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop ends the replica and waits for Run to return.
func (r *replica) stop(t *testing.T) error {
	t.Helper()
	r.cancel()
	select {
	case err := <-r.done:
		r.done <- err // for another stop
		return err
	case <-time.After(waitTimeout):
		t.Fatal("Run did not return after its context ended")
		return nil
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func holder(t *testing.T, kube kubernetes.Interface) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	l, err := kube.CoordinationV1().Leases(ns).Get(ctx, leader.DefaultName, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return *l.Spec.HolderIdentity
}

// TestElector_AgainstRealAPIServer: of two replicas exactly one leads; when
// it stops, it releases the Lease only after its writers returned, and the
// other takes over without waiting for the Lease to expire; a replica whose
// Lease is taken stops its writers and campaigns again; a writer's error
// ends Run.
func TestElector_AgainstRealAPIServer(t *testing.T) {
	c := kubetest.Start(t, kubetest.Options{})
	rc, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	t.Run("one of two leads, and hands over on shutdown", func(t *testing.T) {
		var w writers
		// a's writers note whether the Lease is still a's when they stop.
		var heldAtStop atomic.Value
		var a *replica
		a = start(t, kube, "a", func(ctx context.Context) error {
			err := w.lead(ctx)
			heldAtStop.Store(holder(t, kube))
			return err
		})
		waitFor(t, "a to lead", a.e.Leading)
		b := start(t, kube, "b", w.lead)
		waitFor(t, "b to see a lead", func() bool { return b.e.Leader() == "a" })
		if b.e.Leading() || w.running.Load() != 1 || holder(t, kube) != "a" {
			t.Fatalf("b leading %v, %d writers, holder %q; want only a", b.e.Leading(), w.running.Load(), holder(t, kube))
		}

		if err := a.stop(t); err != nil {
			t.Fatalf("a's Run = %v", err)
		}
		if got := heldAtStop.Load(); got != "a" {
			t.Errorf("the Lease's holder when a's writers stopped = %q, want still a", got)
		}
		// Released when Run returned, so b need not wait for it to expire.
		if h := holder(t, kube); h != "" && h != "b" {
			t.Errorf("the Lease's holder after a stopped = %q, want released (or b)", h)
		}
		waitFor(t, "b to lead", b.e.Leading)
		if holder(t, kube) != "b" || a.e.Leading() {
			t.Errorf("holder %q, a leading %v; want b alone", holder(t, kube), a.e.Leading())
		}
		if err := b.stop(t); err != nil {
			t.Fatalf("b's Run = %v", err)
		}
		if m := w.max.Load(); m != 1 {
			t.Errorf("%d writers ran at once, want 1", m)
		}
	})

	t.Run("a taken Lease stops the writers, then it campaigns again", func(t *testing.T) {
		var w writers
		a := start(t, kube, "a", w.lead)
		waitFor(t, "a to lead", a.e.Leading)

		// Another holder takes the Lease, as a partitioned replica's
		// successor would.
		l, err := kube.CoordinationV1().Leases(ns).Get(ctx, leader.DefaultName, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		intruder, seconds := "intruder", int32(2)
		l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds = &intruder, &seconds
		l.Spec.RenewTime = &metav1.MicroTime{Time: time.Now()}
		if _, err := kube.CoordinationV1().Leases(ns).Update(ctx, l, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitFor(t, "a's writers to stop", func() bool { return w.running.Load() == 0 })
		if a.e.Leading() {
			t.Error("a still reports leading")
		}
		// The intruder never renews: after its 2 s, a leads again.
		waitFor(t, "a to lead again", func() bool { return a.e.Leading() && holder(t, kube) == "a" })
		if n := w.terms.Load(); n != 2 {
			t.Errorf("%d terms, want 2", n)
		}
		a.stop(t)
	})

	t.Run("a writer's error ends Run", func(t *testing.T) {
		boom := errors.New("boom")
		a := start(t, kube, "a", func(context.Context) error { return boom })
		select {
		case err := <-a.done:
			if !errors.Is(err, boom) {
				t.Fatalf("Run = %v, want %v", err, boom)
			}
			a.done <- err
		case <-time.After(waitTimeout):
			t.Fatal("Run did not return the writer's error")
		}
		// It released the Lease: another replica leads at once.
		var w writers
		b := start(t, kube, "b", w.lead)
		waitFor(t, "b to lead", b.e.Leading)
		b.stop(t)
	})

	t.Run("stopped while campaigning", func(t *testing.T) {
		// The Lease is held by someone who is not running.
		far := int32(3600)
		other := "other"
		now := metav1.MicroTime{Time: time.Now()}
		lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: leader.DefaultName},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &other, LeaseDurationSeconds: &far, AcquireTime: &now, RenewTime: &now}}
		if err := kube.CoordinationV1().Leases(ns).Delete(ctx, leader.DefaultName, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if _, err := kube.CoordinationV1().Leases(ns).Create(ctx, lease, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		led := false
		a := start(t, kube, "a", func(context.Context) error { mu.Lock(); led = true; mu.Unlock(); return nil })
		waitFor(t, "a to see the other leader", func() bool { return a.e.Leader() == "other" })
		if err := a.stop(t); err != nil {
			t.Fatalf("Run = %v", err)
		}
		mu.Lock()
		defer mu.Unlock()
		if led || holder(t, kube) != "other" {
			t.Fatalf("led %v, holder %q; want no term and the Lease untouched", led, holder(t, kube))
		}
	})
}

func TestNew_RequiredFields(t *testing.T) {
	for _, tc := range []struct {
		cfg  leader.Config
		want string
	}{
		{leader.Config{Namespace: ns}, "Client is required"},
		{leader.Config{Client: &kubernetes.Clientset{}}, "Namespace is required"},
	} {
		if _, err := leader.New(tc.cfg); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("New(%+v) = %v, want an error saying %q", tc.cfg, err, tc.want)
		}
	}
	e, err := leader.New(leader.Config{Client: &kubernetes.Clientset{}, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	if e.Identity() == "" {
		t.Error("no default identity")
	}
}

// tWriter logs each line to the test.
type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSuffix(string(p), "\n"))
	return len(p), nil
}
