package xds_test

import rpcstatus "google.golang.org/genproto/googleapis/rpc/status"

func statusProto(msg string) *rpcstatus.Status { return &rpcstatus.Status{Code: 3, Message: msg} }
