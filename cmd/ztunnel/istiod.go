package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/ambientmesh/ambient/internal/istiodconn"
	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/ztunnel/admin"
)

// dialIstiod builds ztunnel's link to istiod-lite (package
// internal/istiodconn) from the flags: the xDS client feeding the store and
// the CA client signing pod certificates.
func dialIstiod(o options, store *state.Store, reg prometheus.Registerer, logger *slog.Logger) (*istiodconn.Conn, error) {
	return istiodconn.Dial(istiodconn.Config{
		XDSAddress: o.xdsAddress, CAAddress: o.caAddress,
		RootFile: o.caRootFile, ServerName: o.xdsServerName, TokenFile: o.tokenFile,
		ClusterID: o.clusterID, NodeID: xdsNodeID(o.node),
		Store: store, Registerer: reg, Logger: logger,
	})
}

// xdsNodeID identifies this ztunnel to istiod-lite. It is informational
// (istiod-lite authenticates the token, not the node ID).
func xdsNodeID(node string) string { return "ztunnel~" + node }

// readyWhenSynced holds readiness back until the xDS client has received
// every resource type once, so an empty store is never taken for an empty
// mesh.
type readyWhenSynced struct {
	admin.Source
	synced func() bool
}

func (r readyWhenSynced) Ready() bool { return r.synced() && r.Source.Ready() }
