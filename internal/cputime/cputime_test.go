package cputime

import (
	"testing"
	"time"
)

// TestSelf_CountsWork: spinning for 50 ms of wall time adds CPU time.
func TestSelf_CountsWork(t *testing.T) {
	before, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	for end := time.Now().Add(50 * time.Millisecond); time.Now().Before(end); {
	}
	after, err := Self()
	if err != nil {
		t.Fatal(err)
	}
	if after-before < 10*time.Millisecond {
		t.Fatalf("CPU time grew by %v over 50 ms of spinning", after-before)
	}
}
