package cniserver_test

import (
	"github.com/ambientmesh/ambient/ztunnel"
	"github.com/ambientmesh/ambient/ztunnel/cniserver"
)

// ztunnel is the production PodSink.
var _ cniserver.PodSink = (*ztunnel.Ztunnel)(nil)
