package localconfig

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/ambientmesh/ambient/internal/logtest"
	"github.com/ambientmesh/ambient/internal/state"
)

func workloadsYAML(uids ...string) string {
	var sb strings.Builder
	sb.WriteString("workloads:\n")
	for _, u := range uids {
		sb.WriteString("- uid: " + u + "\n")
	}
	return sb.String()
}

func uidsOf(s state.Snapshot) string {
	var out []string
	for _, w := range s.Workloads {
		out = append(out, w.GetUid())
	}
	return strings.Join(out, ",")
}

func TestWatch_ReloadsOnChangeAndKeepsLastGoodConfig(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	write := func(s string) {
		t.Helper()
		// Write beside and rename over, as editors and ConfigMap updates do.
		tmp := filepath.Join(dir, "tmp")
		if err := os.WriteFile(tmp, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, path); err != nil {
			t.Fatal(err)
		}
	}
	write(workloadsYAML("a"))

	applied := make(chan state.Snapshot, 10)
	var logs logtest.Buffer
	logger := slog.New(slog.NewTextHandler(&logs, nil))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- watch(ctx, path, func(s state.Snapshot) { applied <- s }, logger, 5*time.Millisecond) }()

	next := func() string {
		t.Helper()
		select {
		case s := <-applied:
			return uidsOf(s)
		case <-time.After(5 * time.Second):
			t.Fatal("no config applied")
			return ""
		}
	}
	waitLog := func(sub string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for !strings.Contains(logs.String(), sub) {
			if time.Now().After(deadline) {
				t.Fatalf("log never said %q; log:\n%s", sub, logs.String())
			}
			time.Sleep(5 * time.Millisecond)
		}
	}

	if got := next(); got != "a" {
		t.Fatalf("initial = %q, want a", got)
	}
	write(workloadsYAML("a", "b"))
	if got := next(); got != "a,b" {
		t.Fatalf("after edit = %q, want a,b", got)
	}

	write("workloads:\n- name: no-uid-here\n") // bad edit
	waitLog("no uid")
	if err := os.Remove(path); err != nil { // editor's gap between delete and create
		t.Fatal(err)
	}
	waitLog("no such file")
	select {
	case s := <-applied:
		t.Fatalf("bad edit applied: %q", uidsOf(s))
	case <-time.After(50 * time.Millisecond):
	}
	if n := strings.Count(logs.String(), "no uid"); n != 1 {
		t.Errorf("bad edit logged %d times, want once", n)
	}

	write(workloadsYAML("c"))
	if got := next(); got != "c" {
		t.Fatalf("after fix = %q, want c", got)
	}

	cancel()
	if err := <-done; err != nil {
		t.Errorf("Watch returned %v after cancel, want nil", err)
	}
}

func TestWatch_FailsAtOnceOnABadFirstLoad(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, []byte("workloads: [{uid: a, addresses: [bogus]}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	err := Watch(context.Background(), path, func(state.Snapshot) { t.Error("applied a bad config") }, nil)
	if err == nil || !strings.Contains(err.Error(), `"bogus" is not an IP address`) {
		t.Errorf("err = %v, want the bad IP named", err)
	}
	if err := Watch(context.Background(), filepath.Join(t.TempDir(), "missing"), func(state.Snapshot) {}, nil); err == nil {
		t.Error("missing file: no error")
	}
}
