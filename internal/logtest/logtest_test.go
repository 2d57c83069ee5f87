package logtest

import (
	"fmt"
	"sync"
	"testing"
)

func TestBuffer_ConcurrentWritesReadAsLines(t *testing.T) {
	var b Buffer
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() { fmt.Fprintf(&b, "{\"n\":%d}\n", i) })
	}
	wg.Wait()
	lines := b.JSONLines(t)
	seen := map[float64]bool{}
	for _, l := range lines {
		seen[l["n"].(float64)] = true
	}
	if len(lines) != 8 || len(seen) != 8 {
		t.Fatalf("lines %v from %q", lines, b.String())
	}
}
