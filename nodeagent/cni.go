package nodeagent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"text/template"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/ambientmesh/ambient/internal/netns"
)

// DefaultConfList is the CNI chain used without --cni-conflist: ptp with
// host-local IPAM over the node's pod CIDR, no masquerade (every address in
// use is routed). A conflist file given by flag is the same kind of Go
// text/template, with these fields:
//
//	{{.PodCIDR}}   the node's pod CIDR, e.g. 10.244.1.0/24
//	{{.IPAMDir}}   <state-dir>/cni/ipam, host-local's dataDir
//	{{.NodeName}}  the node's name
//	{{.StateDir}}  the agent's state directory
//
// so a chain with ambient-cni is this list with one more plugin appended.
const DefaultConfList = `{
  "cniVersion": "1.0.0",
  "name": "ambient-pods",
  "plugins": [
    {
      "type": "ptp",
      "mtu": 1500,
      "ipMasq": false,
      "ipam": {
        "type": "host-local",
        "ranges": [[{"subnet": "{{.PodCIDR}}"}]],
        "routes": [{"dst": "0.0.0.0/0"}],
        "dataDir": "{{.IPAMDir}}"
      }
    }
  ]
}`

type confListParams struct {
	PodCIDR  string
	IPAMDir  string
	NodeName string
	StateDir string
}

// renderConfList expands a conflist template and checks that libcni can
// parse the result.
func renderConfList(tmpl string, p confListParams) ([]byte, error) {
	t, err := template.New("conflist").Option("missingkey=error").Parse(tmpl)
	if err != nil {
		return nil, fmt.Errorf("nodeagent: CNI conflist template: %w", err)
	}
	var buf bytes.Buffer
	if err := t.Execute(&buf, p); err != nil {
		return nil, fmt.Errorf("nodeagent: CNI conflist template: %w", err)
	}
	if _, err := libcni.ConfListFromBytes(buf.Bytes()); err != nil {
		return nil, fmt.Errorf("nodeagent: CNI conflist: %w", err)
	}
	return buf.Bytes(), nil
}

// PrimaryConfName is the file the agent writes into an empty CNI
// configuration directory (Config.CNIConfDir).
const PrimaryConfName = "10-ambient-pods.conflist"

// cniConfExtensions are the configuration files a runtime considers.
var cniConfExtensions = []string{".conflist", ".conf", ".json"}

// primaryConfList reads the primary network configuration of dir, the
// lexically first configuration file as runtimes choose it, as a conflist
// (a single-plugin .conf becomes a one-plugin list).
func primaryConfList(dir string) ([]byte, error) {
	files, err := libcni.ConfFiles(dir, cniConfExtensions)
	if err != nil {
		return nil, fmt.Errorf("nodeagent: CNI configuration directory: %w", err)
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("nodeagent: no CNI network configuration in %s", dir)
	}
	sort.Strings(files)
	f := files[0]
	if strings.HasSuffix(f, ".conflist") {
		list, err := libcni.ConfListFromFile(f)
		if err != nil {
			return nil, fmt.Errorf("nodeagent: CNI configuration: %w", err)
		}
		return list.Bytes, nil
	}
	conf, err := libcni.ConfFromFile(f)
	if err != nil {
		return nil, fmt.Errorf("nodeagent: CNI configuration: %w", err)
	}
	list, err := libcni.ConfListFromConf(conf)
	if err != nil {
		return nil, fmt.Errorf("nodeagent: CNI configuration %s: %w", f, err)
	}
	return list.Bytes, nil
}

// ensurePrimaryConf writes conf as dir's primary configuration unless the
// directory already holds one (which a plugin installer may have
// extended): an agent restart must not undo a chained plugin.
func ensurePrimaryConf(dir string, conf []byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("nodeagent: CNI configuration directory: %w", err)
	}
	files, err := libcni.ConfFiles(dir, cniConfExtensions)
	if err != nil {
		return fmt.Errorf("nodeagent: CNI configuration directory: %w", err)
	}
	if len(files) > 0 {
		return nil
	}
	tmp := filepath.Join(dir, "."+PrimaryConfName+".tmp")
	if err := os.WriteFile(tmp, conf, 0o644); err != nil {
		return fmt.Errorf("nodeagent: CNI configuration: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, PrimaryConfName)); err != nil {
		return fmt.Errorf("nodeagent: CNI configuration: %w", err)
	}
	return nil
}

// createNetns creates /run/netns/<name> with lo up.
func createNetns(name string) error {
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		return fmt.Errorf("nodeagent: ip netns add %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		return fmt.Errorf("nodeagent: lo up in %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

// deleteNetns deletes /run/netns/<name>; a missing one is not an error.
func deleteNetns(name string) error {
	if _, err := os.Stat(netnsPath(name)); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if out, err := exec.Command("ip", "netns", "del", name).CombinedOutput(); err != nil {
		return fmt.Errorf("nodeagent: ip netns del %s: %w: %s", name, err, bytes.TrimSpace(out))
	}
	return nil
}

func netnsPath(name string) string { return "/run/netns/" + name }

// inNode runs fn in the node's namespace (or in place when nodeNetns is
// empty): CNI plugins create the host end of the pod's link in whatever
// namespace they run in.
func inNode(nodeNetns string, fn func() error) error {
	if nodeNetns == "" {
		return fn()
	}
	return netns.Do(nodeNetns, fn)
}

func (r *podRecord) runtimeConf() *libcni.RuntimeConf {
	return &libcni.RuntimeConf{
		ContainerID: r.CNI.ContainerID,
		NetNS:       netnsPath(r.Netns),
		IfName:      r.CNI.IfName,
		Args:        r.CNI.Args,
	}
}

func (r *podRecord) cniConfig() (*libcni.CNIConfig, *libcni.NetworkConfigList, error) {
	list, err := libcni.ConfListFromBytes(r.CNI.ConfList)
	if err != nil {
		return nil, nil, fmt.Errorf("nodeagent: CNI conflist: %w", err)
	}
	return libcni.NewCNIConfigWithCacheDir(r.CNI.BinDir, r.CNI.CacheDir, nil), list, nil
}

// cniAdd runs ADD then CHECK for the pod and returns its IPs.
func cniAdd(ctx context.Context, r *podRecord) ([]netip.Addr, json.RawMessage, error) {
	cfg, list, err := r.cniConfig()
	if err != nil {
		return nil, nil, err
	}
	var res types.Result
	err = inNode(r.NodeNetns, func() error {
		var err error
		if res, err = cfg.AddNetworkList(ctx, list, r.runtimeConf()); err != nil {
			return err
		}
		return cfg.CheckNetworkList(ctx, list, r.runtimeConf())
	})
	if err != nil {
		return nil, nil, fmt.Errorf("nodeagent: CNI ADD %s/%s (%s): %w", r.Namespace, r.Name, list.Name, err)
	}
	cur, err := current.NewResultFromResult(res)
	if err != nil {
		return nil, nil, fmt.Errorf("nodeagent: CNI result: %w", err)
	}
	raw, err := json.Marshal(cur)
	if err != nil {
		return nil, nil, fmt.Errorf("nodeagent: CNI result: %w", err)
	}
	var ips []netip.Addr
	for _, ipc := range cur.IPs {
		if a, ok := netip.AddrFromSlice(ipc.Address.IP); ok {
			ips = append(ips, a.Unmap())
		}
	}
	if len(ips) == 0 {
		return nil, raw, fmt.Errorf("nodeagent: CNI ADD %s/%s: the chain returned no IP", r.Namespace, r.Name)
	}
	return ips, raw, nil
}

// cniDel runs DEL with the recorded configuration. Plugins must tolerate a
// DEL for a namespace that is already gone.
func cniDel(ctx context.Context, r *podRecord) error {
	cfg, list, err := r.cniConfig()
	if err != nil {
		return err
	}
	rt := r.runtimeConf()
	if _, err := os.Stat(rt.NetNS); err != nil {
		rt.NetNS = ""
	}
	err = inNode(r.NodeNetns, func() error { return cfg.DelNetworkList(ctx, list, rt) })
	if err != nil {
		return fmt.Errorf("nodeagent: CNI DEL %s/%s (%s): %w", r.Namespace, r.Name, list.Name, err)
	}
	return nil
}

// cniArgs are the CNI_ARGS a kubelet passes.
func cniArgs(ns, name, uid, containerID string) [][2]string {
	return [][2]string{
		{"IgnoreUnknown", "1"},
		{"K8S_POD_NAMESPACE", ns},
		{"K8S_POD_NAME", name},
		{"K8S_POD_INFRA_CONTAINER_ID", containerID},
		{"K8S_POD_UID", uid},
	}
}

// netnsName is the pod namespace's name: the prefix, the node and the
// pod UID's first group (unique enough per node; the record keeps it).
func netnsName(prefix, node, uid string) string {
	short, _, _ := strings.Cut(uid, "-")
	return prefix + node + "-" + short
}
