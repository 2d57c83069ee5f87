// Package images is the node agent's one table mapping container images
// to local binaries (see Table): on a simulated node there are no images,
// and a container runs the binary its image maps to. The same table says
// which commands `kubectl exec` and exec probes may run in a container of
// the image (Table.ResolveExec): its entrypoint and the host programs the
// entry lists as Tools.
package images

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"
)

// Doc is where users are pointed when an image is missing.
const Doc = "nodeagent/images/images.go, or the file given by --image-table"

// Entry maps container images to one local binary.
type Entry struct {
	// Image is a pattern (path.Match syntax) matched against the container's
	// image reference with any digest removed and ":latest" added when it has
	// no tag, both as written and with its registry host removed. So
	// "ambient/ztunnel:*" matches "ambient/ztunnel", "ambient/ztunnel:v1"
	// and "registry.example/ambient/ztunnel:v1".
	Image string `json:"image"`
	// Binary is the local executable that is the image's entrypoint. A
	// relative path is resolved against the table's base directory (the
	// table file's directory, or Config.BinDir for the built-in table),
	// except a bare name that is one of Tools: that is a host program,
	// found on the host's PATH (so ambient/curl's entrypoint is the host's
	// curl).
	Binary string `json:"binary"`
	// Paths are the in-image paths of that entrypoint (such as
	// /usr/local/bin/ztunnel) that a container's command may name; the
	// binary's own base name always qualifies.
	Paths []string `json:"paths,omitempty"`
	// Tools are the host programs the image also ships (such as sh, cat,
	// curl), by base name, found on the host's PATH. A container's
	// command, an exec probe or `kubectl exec` may name one of them, by
	// its name or by any absolute path ending in it (sh or /bin/sh); no
	// other program runs in the image's containers.
	Tools []string `json:"tools,omitempty"`
}

// Table is the one table mapping container images to local binaries.
// There are no container images on a simulated node: a container runs the
// binary its image maps to, with the container's args, as a process in the
// pod's network namespace. The first matching entry wins.
//
// A container's command, if set, must start with the entrypoint (its base
// name or one of Paths) or one of the entry's Tools; the rest of the
// command and the args follow the binary as in Kubernetes. An image with
// no entry leaves the container waiting with reason ErrImagePull and a
// message naming this table. Commands run in a running container
// (`kubectl exec`, exec probes; ResolveExec) follow the same rule: a
// command naming another program fails as a shell's would (exit code
// 126) with a message naming this table.
//
// The file form (--image-table) is YAML:
//
//	images:
//	- image: ambient/sampleapp:*
//	  binary: sampleapp          # relative to the file's directory
//	  paths: [/usr/local/bin/sampleapp]
//	  tools: [sh, cat]           # host programs, on the host's PATH
type Table struct {
	Images []Entry `json:"images"`
	// BaseDir resolves relative Binary paths.
	BaseDir string `json:"-"`
}

// Default is the built-in table: the project's own binaries, as
// `make build` leaves them in bin/ (Config.BinDir).
var Default = []Entry{
	{Image: "ambient/sampleapp:*", Binary: "sampleapp", Paths: []string{"/usr/local/bin/sampleapp"}},
	{Image: "ambient/ztunnel:*", Binary: "ztunnel", Paths: []string{"/usr/local/bin/ztunnel"}},
	{Image: "ambient/istiod-lite:*", Binary: "istiod-lite", Paths: []string{"/usr/local/bin/istiod-lite"}},
	{Image: "ambient/waypoint:*", Binary: "waypoint", Paths: []string{"/usr/local/bin/waypoint"}},
	{Image: "ambient/ambient-cni:*", Binary: "ambient-cni", Paths: []string{"/opt/ambient/bin/ambient-cni"},
		Tools: []string{"sh", "cat", "jq", "cmp", "cp", "mv", "rm", "chmod", "sleep", "touch"}},
	{Image: "ambient/clusterdns:*", Binary: "clusterdns", Paths: []string{"/usr/local/bin/clusterdns"}},
	// A client image for debugging from inside a pod (kubectl exec).
	{Image: "ambient/curl:*", Binary: "curl", Paths: []string{"/usr/bin/curl"}, Tools: []string{"sh", "cat", "curl", "sleep"}},
}

// Load reads a table file; relative binaries are resolved against
// the file's directory.
func Load(file string) (Table, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return Table{}, fmt.Errorf("images: image table: %w", err)
	}
	var t Table
	if err := yaml.UnmarshalStrict(b, &t); err != nil {
		return Table{}, fmt.Errorf("images: image table %s: %w", file, err)
	}
	for i, e := range t.Images {
		if e.Image == "" || e.Binary == "" {
			return Table{}, fmt.Errorf("images: image table %s: entry %d needs image and binary", file, i)
		}
		if _, err := path.Match(e.Image, ""); err != nil {
			return Table{}, fmt.Errorf("images: image table %s: entry %d: bad pattern %q: %w", file, i, e.Image, err)
		}
	}
	abs, err := filepath.Abs(filepath.Dir(file))
	if err != nil {
		return Table{}, fmt.Errorf("images: image table: %w", err)
	}
	t.BaseDir = abs
	return t, nil
}

// ErrNotInTable is wrapped by Resolve for an image with no entry.
var ErrNotInTable = errors.New("not in the local image table")

// ErrCommandNotInImage is wrapped by Resolve for a command naming another
// program than the image's entrypoint.
var ErrCommandNotInImage = errors.New("not provided by the image")

// Resolve returns the argv (argv[0] the local binary) for a container with
// this image, command and args.
func (t Table) Resolve(image string, command, args []string) ([]string, error) {
	e, ok := t.lookup(image)
	if !ok {
		return nil, fmt.Errorf("image %q is %w (see %s)", image, ErrNotInTable, Doc)
	}
	if len(command) == 0 {
		bin, err := t.entrypoint(e)
		if err != nil {
			return nil, err
		}
		return append([]string{bin}, args...), nil
	}
	argv, err := t.command(e, image, command)
	if err != nil {
		return nil, err
	}
	return append(argv, args...), nil
}

// EntrypointFiles maps the image's in-image entrypoint paths (Paths) to
// the local binary, for an argument or environment value that names the
// entrypoint's file (such as an installer copying it out of the image);
// nil for an image without an entry.
func (t Table) EntrypointFiles(image string) map[string]string {
	e, ok := t.lookup(image)
	if !ok || len(e.Paths) == 0 {
		return nil
	}
	bin, err := t.entrypoint(e)
	if err != nil {
		return nil
	}
	files := make(map[string]string, len(e.Paths))
	for _, p := range e.Paths {
		files[p] = bin
	}
	return files
}

// ResolveExec returns the argv for a command run in a running container
// of this image (kubectl exec, an exec probe): command[0] must name the
// image's entrypoint or one of its Tools.
func (t Table) ResolveExec(image string, command []string) ([]string, error) {
	if len(command) == 0 {
		return nil, errors.New("images: exec: empty command")
	}
	e, ok := t.lookup(image)
	if !ok {
		return nil, fmt.Errorf("image %q is %w (see %s)", image, ErrNotInTable, Doc)
	}
	return t.command(e, image, command)
}

// command maps a command naming the entrypoint or a tool to its argv.
func (t Table) command(e Entry, image string, command []string) ([]string, error) {
	var bin string
	var err error
	switch {
	case entrypointNamed(e, command[0]):
		bin, err = t.entrypoint(e)
	case toolNamed(e, command[0]) != "":
		bin, err = lookTool(toolNamed(e, command[0]))
	default:
		return nil, fmt.Errorf("command %q is %w %q, which runs only %s (see %s)",
			command[0], ErrCommandNotInImage, image, strings.Join(append(append([]string{filepath.Base(e.Binary)}, e.Paths...), e.Tools...), ", "), Doc)
	}
	if err != nil {
		return nil, err
	}
	return append([]string{bin}, command[1:]...), nil
}

// entrypoint is the local path of e's Binary.
func (t Table) entrypoint(e Entry) (string, error) {
	switch {
	case filepath.IsAbs(e.Binary):
		return e.Binary, nil
	case !strings.Contains(e.Binary, "/") && slices.Contains(e.Tools, e.Binary):
		return lookTool(e.Binary)
	}
	return filepath.Join(t.BaseDir, e.Binary), nil
}

// toolNamed returns the tool of e that name names (its base name, or an
// absolute path ending in it), or "".
func toolNamed(e Entry, name string) string {
	if name != filepath.Base(name) && !filepath.IsAbs(name) {
		return ""
	}
	if base := filepath.Base(name); slices.Contains(e.Tools, base) {
		return base
	}
	return ""
}

// lookTool finds a tool on the host's PATH.
func lookTool(name string) (string, error) {
	p, err := exec.LookPath(name)
	if err != nil {
		return "", fmt.Errorf("images: tool %q: not on this host's PATH: %w", name, err)
	}
	return p, nil
}

func entrypointNamed(e Entry, name string) bool {
	if name == filepath.Base(e.Binary) || name == e.Binary {
		return true
	}
	for _, p := range e.Paths {
		if p == name {
			return true
		}
	}
	return false
}

func (t Table) lookup(image string) (Entry, bool) {
	ref := normalizeImage(image)
	short := stripRegistry(ref)
	for _, e := range t.Images {
		if ok, _ := path.Match(e.Image, ref); ok {
			return e, true
		}
		if ok, _ := path.Match(e.Image, short); ok {
			return e, true
		}
	}
	return Entry{}, false
}

// normalizeImage removes a digest and adds ":latest" to an untagged ref.
func normalizeImage(ref string) string {
	if i := strings.IndexByte(ref, '@'); i >= 0 {
		ref = ref[:i]
	}
	last := ref[strings.LastIndexByte(ref, '/')+1:]
	if !strings.Contains(last, ":") {
		ref += ":latest"
	}
	return ref
}

// stripRegistry removes a leading registry host (a first component with a
// '.' or ':' or equal to localhost), and docker.io's "library/".
func stripRegistry(ref string) string {
	first, rest, ok := strings.Cut(ref, "/")
	if ok && (strings.ContainsAny(first, ".:") || first == "localhost") {
		ref = rest
		if first == "docker.io" {
			ref = strings.TrimPrefix(ref, "library/")
		}
	}
	return ref
}
