package procbench

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Paths of BenchmarkWaypoint_MeshVsNginx, in table order.
const (
	pathPlain = "plain" // client pod → server pod, nothing between
	pathMesh  = "mesh"  // ztunnel → waypoint → ztunnel
	pathNginx = "nginx" // nginx stream TLS → nginx http → nginx stream TLS
)

var allPaths = []string{pathPlain, pathMesh, pathNginx}

// config sizes the benchmark; every field has a PROCBENCH_* knob.
type config struct {
	Rounds     int           // PROCBENCH_ROUNDS: interleaved passes over the paths
	Paths      []string      // PROCBENCH_PATHS: a subset of plain,mesh,nginx
	Rates      []float64     // PROCBENCH_RATES: fixed rates, req/s
	Duration   time.Duration // PROCBENCH_LATENCY_SECONDS: measured time per rate
	WarmupRun  time.Duration // PROCBENCH_WARMUP_SECONDS: unmeasured run before the first rate
	Conns      int           // PROCBENCH_CONNS: keep-alive connections of the fixed-rate runs
	Size       int           // request and response body size
	Warmup     int           // unmeasured round trips per connection before each run
	MaxStep    time.Duration // PROCBENCH_MAX_SECONDS: measured time per closed-loop step
	MaxLadder  ladder        // PROCBENCH_MAX_CONNS: the closed-loop search (its Limit)
	WaypointGo int           // PROCBENCH_WAYPOINT_PROCS: waypoint GOMAXPROCS = middle nginx workers; 0: each's default (sized to the load / auto)
	ZtunnelGo  int           // PROCBENCH_ZTUNNEL_PROCS: ztunnel GOMAXPROCS = edge nginx workers; 0 as above
	Keep       string        // PROCBENCH_KEEP: a directory to keep configs and logs in
	// PROCBENCH_PERF: a directory for `perf record -g` profiles of each
	// path's middle proxy during round 1's fixed-rate runs (perturbs that
	// round's CPU figures a little).
	Perf string
}

func defaultConfig() config {
	return config{
		Rounds: 3, Paths: allPaths, Rates: []float64{500, 1000, 2000},
		Duration: 4 * time.Second, WarmupRun: time.Second, Conns: 4, Size: 1024, Warmup: 20,
		MaxStep:   2 * time.Second,
		MaxLadder: ladder{Start: 8, Min: 64, Limit: 256, Patience: 1, MinGain: 0.03},
	}
}

// configFromEnv is defaultConfig with the PROCBENCH_* variables of getenv
// applied.
func configFromEnv(getenv func(string) string) (config, error) {
	cfg := defaultConfig()
	num := func(name string, min int, set func(int)) error {
		v := getenv(name)
		if v == "" {
			return nil
		}
		n, err := strconv.Atoi(v)
		if err != nil || n < min {
			return fmt.Errorf("%s=%q: want an integer ≥ %d", name, v, min)
		}
		set(n)
		return nil
	}
	secs := func(d *time.Duration) func(int) { return func(n int) { *d = time.Duration(n) * time.Second } }
	for _, err := range []error{
		num("PROCBENCH_ROUNDS", 1, func(n int) { cfg.Rounds = n }),
		num("PROCBENCH_LATENCY_SECONDS", 1, secs(&cfg.Duration)),
		num("PROCBENCH_WARMUP_SECONDS", 0, secs(&cfg.WarmupRun)),
		num("PROCBENCH_CONNS", 1, func(n int) { cfg.Conns = n }),
		num("PROCBENCH_MAX_SECONDS", 1, secs(&cfg.MaxStep)),
		num("PROCBENCH_MAX_CONNS", 1, func(n int) { cfg.MaxLadder.Limit = n }),
		num("PROCBENCH_WAYPOINT_PROCS", 1, func(n int) { cfg.WaypointGo = n }),
		num("PROCBENCH_ZTUNNEL_PROCS", 1, func(n int) { cfg.ZtunnelGo = n }),
	} {
		if err != nil {
			return cfg, err
		}
	}
	cfg.MaxLadder.Start = min(cfg.MaxLadder.Start, cfg.MaxLadder.Limit)
	cfg.MaxLadder.Min = min(cfg.MaxLadder.Min, cfg.MaxLadder.Limit)
	cfg.Keep, cfg.Perf = getenv("PROCBENCH_KEEP"), getenv("PROCBENCH_PERF")
	if v := getenv("PROCBENCH_RATES"); v != "" {
		cfg.Rates = nil
		for _, f := range strings.Split(v, ",") {
			r, err := strconv.ParseFloat(strings.TrimSpace(f), 64)
			if err != nil || r <= 0 {
				return cfg, fmt.Errorf("PROCBENCH_RATES=%q: want positive req/s separated by commas, e.g. 500,1000,2000", v)
			}
			cfg.Rates = append(cfg.Rates, r)
		}
	}
	if v := getenv("PROCBENCH_PATHS"); v != "" {
		cfg.Paths = nil
		for _, p := range strings.Split(v, ",") {
			p = strings.TrimSpace(p)
			if !slices.Contains(allPaths, p) {
				return cfg, fmt.Errorf("PROCBENCH_PATHS=%q: unknown path %q (want some of %s)", v, p, strings.Join(allPaths, ","))
			}
			cfg.Paths = append(cfg.Paths, p)
		}
		// Table order, whatever the order given.
		slices.SortFunc(cfg.Paths, func(a, b string) int { return slices.Index(allPaths, a) - slices.Index(allPaths, b) })
		cfg.Paths = slices.Compact(cfg.Paths)
	}
	return cfg, nil
}

// The mesh of the benchmark: names and addresses of the local config that
// ztunnels and the waypoint share.
const (
	meshNamespace = "bench"
	serverHost    = "server.bench.svc.cluster.local"
	waypointHost  = "waypoint.bench.svc.cluster.local"
	serverVIP     = "10.96.0.10"
	waypointVIP   = "10.96.0.50"
	servicePort   = 80
	backendPort   = 9080 // the HTTP backend in the server pod
	hbonePort     = 15008
	// UIDs of the three workloads (also the ztunnels' --pod names).
	uidClient   = "client"
	uidServer   = "server"
	uidWaypoint = "waypoint"
)

// meshAddrs are the pod addresses of the topology.
type meshAddrs struct {
	Client, Server, Waypoint netip.Addr
	// Nodes of the pods (1-based), for the workloads' node field.
	ClientNode, ServerNode, WaypointNode int
}

func nodeName(i int) string { return fmt.Sprintf("node-%d", i) }

// meshYAML is the --local-config of both ztunnels and of the waypoint: the
// client and server pods enrolled (HBONE), the waypoint pod not (a waypoint
// is never captured) behind the Service bench/waypoint, and the Service
// bench/server (VIP:80 → pod:9080) bound to that waypoint, as istiod-lite
// would push it for istio.io/use-waypoint=waypoint.
func meshYAML(a meshAddrs) string {
	var sb strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&sb, format+"\n", args...) }
	workload := func(uid string, node int, addr netip.Addr, hbone bool, svcHost string, port, target int) {
		w("- uid: %s", uid)
		w("  name: %s", uid)
		w("  namespace: %s", meshNamespace)
		w("  service_account: %s", uid)
		w("  node: %s", nodeName(node))
		w("  addresses: [%q]", addr)
		if hbone {
			w("  tunnel_protocol: HBONE")
		}
		if svcHost != "" {
			w("  services: {%s/%s: {ports: [{service_port: %d, target_port: %d}]}}", meshNamespace, svcHost, port, target)
		}
	}
	service := func(name, host, vip string, port, target int) {
		w("- name: %s", name)
		w("  namespace: %s", meshNamespace)
		w("  hostname: %s", host)
		w("  addresses: [%q]", vip)
		w("  ports: [{service_port: %d, target_port: %d}]", port, target)
	}
	w("workloads:")
	workload(uidClient, a.ClientNode, a.Client, true, "", 0, 0)
	workload(uidServer, a.ServerNode, a.Server, true, serverHost, servicePort, backendPort)
	workload(uidWaypoint, a.WaypointNode, a.Waypoint, false, waypointHost, hbonePort, hbonePort)
	w("services:")
	service("waypoint", waypointHost, waypointVIP, hbonePort, hbonePort)
	service("server", serverHost, serverVIP, servicePort, backendPort)
	w("  waypoint: {hbone_mtls_port: %d, hostname: {namespace: %s, hostname: %s}}", hbonePort, meshNamespace, waypointHost)
	return sb.String()
}
