// Package cputime reads the CPU time the calling process has used: what
// the GOMAXPROCS controller samples and the benchmarks report per
// operation.
package cputime

import (
	"syscall"
	"time"
)

// Self is the user+system CPU time of the whole process so far
// (getrusage(RUSAGE_SELF)).
func Self() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
