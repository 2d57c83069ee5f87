package main

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestMain lets the tests run this binary's main: with AMBIENTCTL_MAIN=1
// the test binary is ambientctl.
func TestMain(m *testing.M) {
	if os.Getenv("AMBIENTCTL_MAIN") == "1" {
		main()
		return
	}
	os.Exit(m.Run())
}

func ambientctl(t *testing.T, args ...string) (string, string, error) {
	t.Helper()
	cmd := exec.Command(os.Args[0], args...)
	cmd.Env = append(os.Environ(), "AMBIENTCTL_MAIN=1")
	var out, errOut strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	return out.String(), errOut.String(), err
}

func TestMain_HelpListsTheCommands(t *testing.T) {
	out, _, err := ambientctl(t, "--help")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []string{"ambient", "zc", "flows", "--kubeconfig", "--context", "--namespace", "--all-namespaces", "--output"} {
		if !strings.Contains(out, c) {
			t.Errorf("help lacks %s:\n%s", c, out)
		}
	}
}

func TestMain_FailureExitsOneWithTheReason(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "kubeconfig")
	_, errOut, err := ambientctl(t, "ambient", "status", "--kubeconfig", missing)
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 1 {
		t.Fatalf("exit: %v, want status 1", err)
	}
	if !strings.HasPrefix(errOut, "error: reading kubeconfig "+missing) {
		t.Errorf("stderr %q", errOut)
	}
}
