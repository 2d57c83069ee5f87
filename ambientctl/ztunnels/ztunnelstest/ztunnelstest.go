// Package ztunnelstest builds ztunnel admin endpoints for ambientctl's
// tests: config dumps from a --local-config style YAML, a fake admin Source,
// and real admin servers (ztunnel/admin) listening on 127.0.0.1:15000
// inside a test node's network namespace, with a flow Feed, as a
// hostNetwork ztunnel pod would.
package ztunnelstest

import (
	"context"
	"testing"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/internal/testenv"
	"github.com/ambientmesh/ambient/ztunnel"
	"github.com/ambientmesh/ambient/ztunnel/admin"
	"github.com/ambientmesh/ambient/ztunnel/localconfig"
)

// View loads a mesh YAML (ztunnel's --local-config format) as a state view.
func View(t testing.TB, path string) *state.View {
	t.Helper()
	snap, err := localconfig.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	v, err := state.NewView(snap, 1)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// Dump is the config dump a ztunnel with the mesh of path and certs serves.
func Dump(t testing.TB, path string, certs []admin.Certificate) *admin.Dump {
	t.Helper()
	d := admin.BuildDump(View(t, path), certs)
	return &d
}

// Source is a fixed admin.Source.
type Source struct {
	V     *state.View
	Certs []admin.Certificate
}

// Ready is always true.
func (s *Source) Ready() bool { return true }

// Debug is empty.
func (s *Source) Debug() ztunnel.DebugSnapshot { return ztunnel.DebugSnapshot{} }

// View is V.
func (s *Source) View() *state.View { return s.V }

// Certificates is Certs.
func (s *Source) Certificates() []admin.Certificate { return s.Certs }

// StartAdmin serves src and feed on 127.0.0.1:15000 inside ns until the
// test ends.
func StartAdmin(t testing.TB, ns testenv.NS, src admin.Source, feed *telemetry.Feed) {
	t.Helper()
	ln, err := ns.Listen("127.0.0.1:15000")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := admin.New(admin.Config{Admin: ln, Source: src, Flows: feed})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("admin server in %s: %v", ns.Name, err)
		}
	})
}
