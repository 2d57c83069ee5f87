//go:build !linux

package hbone3

import (
	"errors"
	"syscall"
)

var errUnsupported = errors.New("hbone3: socket tuning is only implemented on Linux")

func getBuffer(syscall.RawConn, bufferKind) (int, error)     { return 0, errUnsupported }
func setBuffer(syscall.RawConn, bufferKind, int, bool) error { return errUnsupported }
func gsoAvailable(syscall.RawConn) bool                      { return false }
