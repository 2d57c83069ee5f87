package images

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestTable_Resolve(t *testing.T) {
	tab := Table{BaseDir: "/opt/bin", Images: Default}
	tests := []struct {
		image      string
		cmd, args  []string
		want       []string
		wantErr    error
		errContain string
	}{
		{image: "ambient/ztunnel:v1", args: []string{"--x"}, want: []string{"/opt/bin/ztunnel", "--x"}},
		{image: "ambient/ztunnel", want: []string{"/opt/bin/ztunnel"}},
		{image: "registry.example/ambient/ztunnel:v1@sha256:abc", want: []string{"/opt/bin/ztunnel"}},
		{image: "localhost:5000/ambient/istiod-lite:dev", want: []string{"/opt/bin/istiod-lite"}},
		{image: "ambient/sampleapp:v2", cmd: []string{"/usr/local/bin/sampleapp", "--name", "a"}, args: []string{"--v"},
			want: []string{"/opt/bin/sampleapp", "--name", "a", "--v"}},
		{image: "ambient/sampleapp:v2", cmd: []string{"sampleapp"}, want: []string{"/opt/bin/sampleapp"}},
		{image: "ambient/sampleapp:v2", cmd: []string{"/bin/sh", "-c", "x"}, wantErr: ErrCommandNotInImage},
		{image: "nginx:1.27", wantErr: ErrNotInTable, errContain: `image "nginx:1.27" is not in the local image table (see ` + Doc},
		{image: "ambient/ztunnelx:v1", wantErr: ErrNotInTable},
	}
	for _, tc := range tests {
		got, err := tab.Resolve(tc.image, tc.cmd, tc.args)
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), tc.errContain) {
				t.Errorf("Resolve(%q, %q): err %v, want %v containing %q", tc.image, tc.cmd, err, tc.wantErr, tc.errContain)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("Resolve(%q, %q, %q) = %q, %v; want %q", tc.image, tc.cmd, tc.args, got, err, tc.want)
		}
	}
}

func TestLoadImageTable_ResolvesAgainstTheFilesDirectory(t *testing.T) {
	dir := t.TempDir()
	f := filepath.Join(dir, "images.yaml")
	if err := os.WriteFile(f, []byte("images:\n- image: my/app:*\n  binary: app\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tab, err := Load(f)
	if err != nil {
		t.Fatal(err)
	}
	got, err := tab.Resolve("my/app:1", nil, nil)
	if err != nil || got[0] != filepath.Join(dir, "app") {
		t.Errorf("Resolve = %q, %v", got, err)
	}
	if err := os.WriteFile(f, []byte("images:\n- image: x\n  binry: y\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(f); err == nil {
		t.Error("a misspelt field was accepted")
	}
}
