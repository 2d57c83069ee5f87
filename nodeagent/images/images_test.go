package images

import (
	"errors"
	"os"
	"os/exec"
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

func TestTable_ResolveExec_EntrypointOrToolsOnly(t *testing.T) {
	tab := Table{BaseDir: "/opt/bin", Images: Default}
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip("no sh on this host")
	}
	curl, curlErr := exec.LookPath("curl")
	tests := []struct {
		image   string
		cmd     []string
		want    []string
		wantErr error
		skip    bool
	}{
		{image: "ambient/ambient-cni:v1", cmd: []string{"sh", "-c", "true"}, want: []string{sh, "-c", "true"}},
		{image: "ambient/ambient-cni:v1", cmd: []string{"/bin/sh"}, want: []string{sh}},
		{image: "ambient/ambient-cni:v1", cmd: []string{"/opt/ambient/bin/ambient-cni", "x"}, want: []string{"/opt/bin/ambient-cni", "x"}},
		{image: "ambient/ambient-cni:v1", cmd: []string{"curl"}, wantErr: ErrCommandNotInImage},
		{image: "ambient/ambient-cni:v1", cmd: []string{"bin/sh"}, wantErr: ErrCommandNotInImage},
		{image: "ambient/ztunnel:v1", cmd: []string{"sh"}, wantErr: ErrCommandNotInImage},
		{image: "ambient/curl:8", cmd: []string{"curl", "-s"}, want: []string{curl, "-s"}, skip: curlErr != nil},
		{image: "nginx:1", cmd: []string{"sh"}, wantErr: ErrNotInTable},
	}
	for _, tc := range tests {
		if tc.skip {
			continue
		}
		got, err := tab.ResolveExec(tc.image, tc.cmd)
		if tc.wantErr != nil {
			if !errors.Is(err, tc.wantErr) || !strings.Contains(err.Error(), Doc) {
				t.Errorf("ResolveExec(%q, %q): err %v, want %v naming %q", tc.image, tc.cmd, err, tc.wantErr, Doc)
			}
			continue
		}
		if err != nil || !slices.Equal(got, tc.want) {
			t.Errorf("ResolveExec(%q, %q) = %q, %v; want %q", tc.image, tc.cmd, got, err, tc.want)
		}
	}
	// The curl image's entrypoint is the host's curl.
	if curlErr == nil {
		if got, err := tab.Resolve("ambient/curl:latest", nil, []string{"-V"}); err != nil || !slices.Equal(got, []string{curl, "-V"}) {
			t.Errorf("Resolve(ambient/curl) = %q, %v", got, err)
		}
	}
}

func TestTable_EntrypointFiles_MapInImagePathsToTheBinary(t *testing.T) {
	tab := Table{BaseDir: "/opt/bin", Images: Default}
	got := tab.EntrypointFiles("ambient/ambient-cni:dev")
	if len(got) != 1 || got["/opt/ambient/bin/ambient-cni"] != "/opt/bin/ambient-cni" {
		t.Errorf("EntrypointFiles(ambient-cni) = %v, want its Dockerfile's /opt/ambient/bin/ambient-cni -> /opt/bin/ambient-cni", got)
	}
	if got := tab.EntrypointFiles("nginx:1.27"); got != nil {
		t.Errorf("EntrypointFiles of an image not in the table = %v, want nil", got)
	}
}

// TestDefault_PathsMatchTheDockerfiles: every in-image path of the built-in
// table is where the image's Dockerfile puts the binary.
func TestDefault_PathsMatchTheDockerfiles(t *testing.T) {
	for _, e := range Default {
		name := strings.TrimSuffix(strings.TrimPrefix(e.Image, "ambient/"), ":*")
		b, err := os.ReadFile(filepath.Join("..", "..", "build", "docker", name+".Dockerfile"))
		if err != nil {
			t.Errorf("%s: %v", e.Image, err)
			continue
		}
		for _, p := range e.Paths {
			if !strings.Contains(string(b), p) {
				t.Errorf("%s: build/docker/%s.Dockerfile never mentions %s", e.Image, name, p)
			}
		}
	}
}
