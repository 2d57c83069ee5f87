package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"

	"github.com/ambientmesh/ambient/internal/cniproto"
)

// Defaults for the plugin configuration.
const (
	DefaultZtunnelSocket  = "/var/run/ambient/ztunnel.sock"
	DefaultStateDir       = "/var/run/ambient/pods"
	DefaultZtunnelTimeout = 2 * time.Second
	maxZtunnelTimeout     = 30 * time.Second
)

// NetConf is the plugin's configuration, from stdin:
//
//	{
//	  "cniVersion": "1.0.0", "name": "k8s-pod-network", "type": "ambient-cni",
//	  "ztunnelSocket": "/var/run/ambient/ztunnel.sock",
//	  "stateDir": "/var/run/ambient/pods",
//	  "ztunnelTimeout": "2s",
//	  "prevResult": { ... }
//	}
type NetConf struct {
	types.PluginConf
	// ZtunnelSocket is ztunnel's CNI socket (cniserver.Config.SocketPath).
	ZtunnelSocket string `json:"ztunnelSocket,omitempty"`
	// StateDir holds one state file per pod; ztunnel scans it on start
	// (cniserver.Config.StateDir).
	StateDir string `json:"stateDir,omitempty"`
	// ZtunnelTimeout bounds one request to ztunnel (Go duration syntax).
	ZtunnelTimeout string `json:"ztunnelTimeout,omitempty"`

	// Timeout is ZtunnelTimeout parsed, or the default.
	Timeout time.Duration `json:"-"`
}

// parseConfig parses and checks the stdin configuration and applies
// defaults. It leaves prevResult raw (see parsePrevResult) so that DEL and
// CHECK do not fail on a result they do not need.
func parseConfig(stdin []byte) (*NetConf, error) {
	conf := &NetConf{}
	if err := json.Unmarshal(stdin, conf); err != nil {
		return nil, fmt.Errorf("ambient-cni: parse network configuration: %w", err)
	}
	if conf.ZtunnelSocket == "" {
		conf.ZtunnelSocket = DefaultZtunnelSocket
	}
	if conf.StateDir == "" {
		conf.StateDir = DefaultStateDir
	}
	for _, f := range []struct{ name, v string }{{"ztunnelSocket", conf.ZtunnelSocket}, {"stateDir", conf.StateDir}} {
		if !filepath.IsAbs(f.v) {
			return nil, fmt.Errorf("ambient-cni: config %s %q must be an absolute path", f.name, f.v)
		}
	}
	conf.Timeout = DefaultZtunnelTimeout
	if conf.ZtunnelTimeout != "" {
		d, err := time.ParseDuration(conf.ZtunnelTimeout)
		if err != nil || d <= 0 || d > maxZtunnelTimeout {
			return nil, fmt.Errorf("ambient-cni: config ztunnelTimeout %q: want a duration in (0, %v], such as \"2s\"", conf.ZtunnelTimeout, maxZtunnelTimeout)
		}
		conf.Timeout = d
	}
	return conf, nil
}

// parsePrevResult parses the previous plugin's result, which a chained
// ADD requires.
func parsePrevResult(conf *NetConf) error {
	if conf.RawPrevResult == nil {
		return errors.New("ambient-cni: no prevResult: ambient-cni is a chained plugin and must come after the plugin that assigns the pod's IPs in the network configuration list")
	}
	if err := version.ParsePrevResult(&conf.PluginConf); err != nil {
		return fmt.Errorf("ambient-cni: %w", err)
	}
	return nil
}

// podIPs returns the addresses of prevResult that belong to the pod: those
// on an interface inside the sandbox, or on no named interface.
func podIPs(prev types.Result) ([]string, error) {
	res, err := current.NewResultFromResult(prev)
	if err != nil {
		return nil, fmt.Errorf("ambient-cni: convert prevResult: %w", err)
	}
	var ips []string
	seen := map[string]bool{}
	for _, ipc := range res.IPs {
		if ipc.Interface != nil && *ipc.Interface >= 0 && *ipc.Interface < len(res.Interfaces) &&
			res.Interfaces[*ipc.Interface].Sandbox == "" {
			continue // host side of the link
		}
		ip := ipc.Address.IP.String()
		if ipc.Address.IP == nil || seen[ip] {
			continue
		}
		seen[ip] = true
		ips = append(ips, ip)
	}
	if len(ips) > cniproto.MaxIPs {
		return nil, fmt.Errorf("ambient-cni: prevResult has %d pod IPs, at most %d supported", len(ips), cniproto.MaxIPs)
	}
	return ips, nil
}

// podArgs is the pod identity kubelet passes in CNI_ARGS.
type podArgs struct {
	Namespace string // K8S_POD_NAMESPACE
	Name      string // K8S_POD_NAME
	UID       string // K8S_POD_UID
}

// parsePodArgs parses CNI_ARGS ("K1=V1;K2=V2", unknown keys ignored). ok
// is false when no K8S_POD_* key is present at all: the sandbox is not a
// Kubernetes pod and the plugin passes it through. A partial identity, a
// malformed pair or a repeated key is an error.
func parsePodArgs(cniArgs string) (args podArgs, ok bool, err error) {
	if strings.TrimSpace(cniArgs) == "" {
		return podArgs{}, false, nil
	}
	fields := map[string]*string{
		"K8S_POD_NAMESPACE": &args.Namespace,
		"K8S_POD_NAME":      &args.Name,
		"K8S_POD_UID":       &args.UID,
	}
	seen := map[string]bool{}
	for _, pair := range strings.Split(cniArgs, ";") {
		if pair == "" {
			continue // tolerate "A=1;;B=2" and a trailing ';'
		}
		k, v, found := strings.Cut(pair, "=")
		if !found || k == "" {
			return podArgs{}, false, fmt.Errorf("ambient-cni: CNI_ARGS: malformed pair %q, want KEY=VALUE", pair)
		}
		dst, known := fields[k]
		if !known {
			continue
		}
		if seen[k] {
			return podArgs{}, false, fmt.Errorf("ambient-cni: CNI_ARGS: %s given twice", k)
		}
		seen[k] = true
		*dst = v
	}
	if len(seen) == 0 {
		return podArgs{}, false, nil
	}
	for _, k := range []string{"K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_UID"} {
		if *fields[k] == "" {
			return podArgs{}, false, fmt.Errorf("ambient-cni: CNI_ARGS: %s missing or empty (got %s); the container runtime must pass the pod's namespace, name and uid", k, cniArgs)
		}
	}
	if err := cniproto.ValidateUID(args.UID); err != nil {
		return podArgs{}, false, fmt.Errorf("ambient-cni: CNI_ARGS: K8S_POD_UID: %w", err)
	}
	return args, true, nil
}
