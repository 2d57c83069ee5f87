package cli_test

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain checks that no command leaves goroutines behind (followers,
// port-forwards, HTTP connections).
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
