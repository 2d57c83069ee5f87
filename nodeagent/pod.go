package nodeagent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	v1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/ambientmesh/ambient/nodeagent/images"
	"github.com/ambientmesh/ambient/nodeagent/poddns"
	"github.com/ambientmesh/ambient/nodeagent/podenv"
	"github.com/ambientmesh/ambient/nodeagent/podstatus"
	"github.com/ambientmesh/ambient/nodeagent/probe"
)

// LogDirAnnotation is set on each pod to the directory holding its
// containers' logs, <state-dir>/pods/<ns>_<name>_<uid>/<container>.log.
const LogDirAnnotation = "nodeagent.ambientmesh.io/log-dir"

// Files in a pod's directory.
const (
	volumesDir     = "volumes"     // the pod's volumes, see podenv
	kubeconfigFile = "kubeconfig"  // see Config.APIServer
	resolvConfFile = "resolv.conf" // mounted on the containers' /etc/resolv.conf
)

// Timings of a pod worker.
const (
	retryPeriod  = 2 * time.Second  // sandbox or container config errors
	killWait     = 10 * time.Second // SIGKILL to reaped
	backoffReset = 10 * time.Minute // a run this long resets the backoff
)

// podWorker owns one pod on this node: its sandbox (network namespace and
// CNI attachment, or the node's namespace), volumes, container processes,
// probes and status. One goroutine (run) owns every field below mu's; the
// informer side only hands over new pod objects.
type podWorker struct {
	a   *Agent
	uid types.UID
	log *slog.Logger
	dir string // <state-dir>/pods/<ns>_<name>_<uid>

	notify chan struct{} // cap 1: latest changed
	gone   chan struct{} // closed when the pod left the API (or this node)
	done   chan struct{} // closed when run returns
	gOnce  sync.Once

	mu     sync.Mutex // guards latest and execs
	latest *v1.Pod
	// execs are the running containers as exec and port-forward (the
	// kubelet API) see them, by name.
	execs map[string]*execTarget

	// Owned by run.
	pod          *v1.Pod
	rec          *podRecord
	podIPs       []netip.Addr
	sandboxReady bool
	sandboxErr   error
	startTime    time.Time
	ctrs         []*ctr
	exits        chan ctrExit
	probes       chan probe.Event
	timer        *time.Timer
	tokenRefresh time.Time
	volumesDone  bool
	lastStatus   *v1.PodStatus
}

// ctr is one container of the pod, across its runs.
type ctr struct {
	spec     v1.Container
	gen      int // run number; events of older runs are dropped
	proc     *process
	ready    bool
	restarts int32
	last     *v1.ContainerStateTerminated
	final    bool      // terminated for good (restart policy)
	startAt  time.Time // when to (re)start; zero while running or final
	backoff  time.Duration
	waitWhy  string
	waitMsg  string
	stopProb context.CancelFunc
}

type ctrExit struct {
	name string
	gen  int
	info exitInfo
}

func (w *podWorker) setLatest(p *v1.Pod) {
	w.mu.Lock()
	w.latest = p
	w.mu.Unlock()
	select {
	case w.notify <- struct{}{}:
	default:
	}
}

func (w *podWorker) markGone() { w.gOnce.Do(func() { close(w.gone) }) }

func (w *podWorker) current() *v1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.latest
}

// run is the pod worker's goroutine.
func (w *podWorker) run(ctx context.Context) {
	defer close(w.done)
	w.pod = w.current()
	w.exits = make(chan ctrExit, len(w.pod.Spec.Containers))
	w.probes = make(chan probe.Event, 4)
	w.timer = time.NewTimer(0)
	defer w.timer.Stop()
	for _, c := range w.pod.Spec.Containers {
		w.ctrs = append(w.ctrs, &ctr{spec: c, backoff: w.a.cfg.RestartBackoff})
	}
	w.startTime = time.Now()
	if err := w.prepare(ctx); err != nil {
		w.log.Error("pod directory", "err", err)
	}
	for {
		if p := w.current(); p.DeletionTimestamp != nil {
			grace := int64(30)
			if p.DeletionGracePeriodSeconds != nil {
				grace = *p.DeletionGracePeriodSeconds
			}
			w.log.Info("pod deleted: stopping", "grace", time.Duration(grace)*time.Second)
			w.finish(ctx, time.Duration(grace)*time.Second, true)
			return
		}
		w.step(ctx)
		w.pushStatus(ctx)
		select {
		case <-ctx.Done():
			w.log.Info("agent stopping: stopping pod")
			w.finish(ctx, w.a.cfg.ShutdownGrace, false)
			return
		case <-w.gone:
			w.log.Info("pod gone from the API: stopping")
			w.finish(ctx, 0, false)
			return
		case <-w.notify:
			w.pod = w.current()
		case e := <-w.exits:
			w.handleExit(e)
		case e := <-w.probes:
			w.handleProbe(e)
		case <-w.timer.C:
		}
	}
}

// prepare creates the pod directory and its record, and publishes the log
// directory.
func (w *podWorker) prepare(ctx context.Context) error {
	// The record exists even if it cannot be saved: saving is retried with
	// every resource it records, and nothing is created unrecorded.
	w.rec = &podRecord{Namespace: w.pod.Namespace, Name: w.pod.Name, UID: string(w.uid), NodeNetns: w.a.cfg.NodeNetns}
	if err := os.MkdirAll(filepath.Join(w.dir, volumesDir), 0o755); err != nil {
		return err
	}
	if err := w.rec.save(w.dir); err != nil {
		return err
	}
	w.log.Info("pod logs", "dir", w.dir)
	patch := fmt.Appendf(nil, `{"metadata":{"uid":%q,"annotations":{%q:%q}}}`, w.uid, LogDirAnnotation, w.dir)
	if _, err := w.a.cfg.Client.CoreV1().Pods(w.pod.Namespace).Patch(ctx, w.pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil && ctx.Err() == nil {
		w.log.Warn("annotating the pod with its log directory", "err", err)
	}
	return nil
}

// step moves the pod forward: sandbox, volumes, due (re)starts; and arms
// the timer for the next due moment.
func (w *podWorker) step(ctx context.Context) {
	now := time.Now()
	var next time.Time
	due := func(t time.Time) {
		if !t.IsZero() && (next.IsZero() || t.Before(next)) {
			next = t
		}
	}
	if w.allFinal() && w.sandboxReady && !w.pod.Spec.HostNetwork {
		// A finished pod keeps its object, not its network.
		if err := w.rec.teardown(ctx, w.log); err != nil {
			w.log.Error("pod teardown", "err", err)
		} else {
			w.rec.CNI, w.rec.Netns, w.sandboxReady = nil, "", false
			_ = w.rec.save(w.dir)
		}
	}
	if !w.sandboxReady && !w.allFinal() {
		if err := w.setupSandbox(ctx); err != nil {
			w.sandboxErr = err
			w.log.Error("pod sandbox", "err", err)
			due(now.Add(retryPeriod))
		} else {
			w.sandboxErr = nil
			w.sandboxReady = true
		}
	}
	if w.sandboxReady && (!w.volumesDone || (!w.tokenRefresh.IsZero() && !now.Before(w.tokenRefresh))) {
		refresh, err := w.writeVolumes(ctx)
		if err != nil {
			w.log.Error("pod volumes", "err", err)
			for _, c := range w.ctrs {
				if c.proc == nil && !c.final {
					c.waitWhy, c.waitMsg = "CreateContainerConfigError", err.Error()
				}
			}
			due(now.Add(retryPeriod))
		} else {
			w.volumesDone, w.tokenRefresh = true, refresh
		}
	}
	due(w.tokenRefresh)
	if len(w.pod.Spec.InitContainers) > 0 {
		for _, c := range w.ctrs {
			c.waitWhy, c.waitMsg = "CreateContainerConfigError", "init containers are not supported by the node agent (see nodeagent package doc)"
		}
		return
	}
	if w.sandboxReady && w.volumesDone {
		for _, c := range w.ctrs {
			if c.proc != nil || c.final {
				continue
			}
			if !c.startAt.IsZero() && now.Before(c.startAt) {
				due(c.startAt)
				continue
			}
			if err := w.start(ctx, c); err != nil {
				w.log.Error("container start", "container", c.spec.Name, "err", err)
				c.startAt = now.Add(retryPeriod)
				due(c.startAt)
			}
		}
	}
	if !w.timer.Stop() {
		select {
		case <-w.timer.C:
		default:
		}
	}
	if !next.IsZero() {
		w.timer.Reset(time.Until(next))
	}
}

func (w *podWorker) allFinal() bool {
	for _, c := range w.ctrs {
		if !c.final {
			return false
		}
	}
	return len(w.ctrs) > 0
}

// setupSandbox gives the pod its network: the node's own for hostNetwork,
// else a fresh namespace attached by the CNI chain.
func (w *podWorker) setupSandbox(ctx context.Context) error {
	cfg := &w.a.cfg
	if w.pod.Spec.HostNetwork {
		w.podIPs = []netip.Addr{cfg.NodeIP}
		return nil
	}
	if w.rec.Netns == "" {
		w.rec.Netns = netnsName(cfg.NetnsPrefix, cfg.NodeName, string(w.uid))
	}
	if _, err := os.Stat(netnsPath(w.rec.Netns)); err != nil {
		if err := w.rec.save(w.dir); err != nil {
			return err
		}
		if err := createNetns(w.rec.Netns); err != nil {
			return err
		}
	}
	if w.rec.CNI == nil {
		conf, err := w.a.confList()
		if err != nil {
			return err
		}
		id := string(w.uid)
		w.rec.CNI = &cniRecord{
			BinDir:      cfg.CNIBinDirs,
			CacheDir:    filepath.Join(cfg.StateDir, "cni", "cache"),
			ConfList:    conf,
			ContainerID: id,
			IfName:      "eth0",
			Args:        cniArgs(w.pod.Namespace, w.pod.Name, string(w.uid), id),
		}
	}
	if err := w.rec.save(w.dir); err != nil { // before ADD, always
		return err
	}
	ips, raw, err := cniAdd(ctx, w.rec)
	if err != nil {
		// Leave nothing half-attached; the next attempt starts clean.
		if delErr := cniDel(ctx, w.rec); delErr != nil {
			w.log.Warn("CNI DEL after a failed ADD", "err", delErr)
		}
		return err
	}
	w.rec.CNI.Result = raw
	w.podIPs = ips
	w.log.Info("pod network ready", "netns", w.rec.Netns, "ips", ips)
	return w.rec.save(w.dir)
}

func (w *podWorker) podNetnsPath() string {
	if w.pod.Spec.HostNetwork {
		return w.a.cfg.NodeNetns
	}
	return netnsPath(w.rec.Netns)
}

func (w *podWorker) containerInput(c *v1.Container) (podenv.Input, error) {
	pm, err := podenv.MountPaths(w.pod, c, filepath.Join(w.dir, volumesDir), w.a.hostPaths())
	if err != nil {
		return podenv.Input{}, err
	}
	// The image's own files (its entrypoint at the in-image path) map to
	// the local binary like volumes do.
	if files := w.a.cfg.Images.EntrypointFiles(c.Image); len(files) > 0 {
		for inImage, local := range files {
			pm = append(pm, podenv.Mapping{MountPath: inImage, HostPath: local})
		}
		pm = podenv.NewPathMap(pm)
	}
	var ips []string
	for _, ip := range w.podIPs {
		ips = append(ips, ip.String())
	}
	return podenv.Input{
		Pod:      w.pod,
		PodIPs:   ips,
		HostIP:   w.a.cfg.NodeIP.String(),
		NodeCPU:  w.a.cfg.Capacity[v1.ResourceCPU],
		NodeMem:  w.a.cfg.Capacity[v1.ResourceMemory],
		Lookups:  podenv.APILookups{Ctx: context.Background(), Client: w.a.cfg.Client},
		BaseEnv:  append([]string{"PATH=" + os.Getenv("PATH")}, podenv.APIServerEnv(w.a.cfg.APIServer, filepath.Join(w.dir, kubeconfigFile), pm)...),
		PodRoot:  filepath.Join(w.dir, volumesDir),
		PathsMap: pm,
	}, nil
}

func (w *podWorker) writeVolumes(ctx context.Context) (time.Time, error) {
	in, err := w.containerInput(&v1.Container{})
	if err != nil {
		return time.Time{}, err
	}
	vw := podenv.VolumeWriter{Client: w.a.cfg.Client, Pod: w.pod, Dir: filepath.Join(w.dir, volumesDir), Now: time.Now, HostPaths: w.a.hostPaths()}
	refresh, err := vw.Write(ctx, in)
	if err != nil || w.a.cfg.APIServer == "" {
		return refresh, err
	}
	for i := range w.pod.Spec.Containers {
		pm, err := podenv.MountPaths(w.pod, &w.pod.Spec.Containers[i], filepath.Join(w.dir, volumesDir), w.a.hostPaths())
		if err != nil {
			return refresh, err
		}
		if sa, ok := podenv.SAHostDir(pm); ok {
			return refresh, podenv.WriteFileAtomic(w.dir, kubeconfigFile, podenv.PodKubeconfig(w.a.cfg.APIServer, sa), 0o600)
		}
	}
	return refresh, nil
}

// start runs one container.
func (w *podWorker) start(ctx context.Context, c *ctr) error {
	argv, err := w.a.cfg.Images.Resolve(c.spec.Image, c.spec.Command, nil)
	if err != nil {
		c.waitWhy, c.waitMsg = "ErrImagePull", err.Error()
		if errors.Is(err, images.ErrCommandNotInImage) {
			c.waitWhy = "CreateContainerError"
		}
		return err
	}
	in, err := w.containerInput(&c.spec)
	if err != nil {
		c.waitWhy, c.waitMsg = "CreateContainerConfigError", err.Error()
		return err
	}
	env, err := podenv.BuildEnv(in, &c.spec)
	if err != nil {
		c.waitWhy, c.waitMsg = "CreateContainerConfigError", err.Error()
		return err
	}
	argv = append(argv[:1], podenv.ExpandArgs(append(argv[1:], c.spec.Args...), env, in.PathsMap)...)
	dir := w.dir
	if c.spec.WorkingDir != "" {
		dir = in.PathsMap.Rewrite(c.spec.WorkingDir)
	}
	logPath := filepath.Join(w.dir, c.spec.Name+".log")
	mounts, err := w.mounts()
	if err != nil {
		c.waitWhy, c.waitMsg = "CreateContainerConfigError", err.Error()
		return err
	}
	p, err := startProcess(w.podNetnsPath(), mounts, argv, env, dir, logPath)
	if err != nil {
		c.waitWhy, c.waitMsg = "RunContainerError", err.Error()
		return err
	}
	c.gen++
	c.proc, c.startAt, c.waitWhy, c.waitMsg, c.ready = p, time.Time{}, "", "", false
	if w.rec.Processes == nil {
		w.rec.Processes = map[string]procRecord{}
	}
	w.rec.Processes[c.spec.Name] = p.rec
	if err := w.rec.save(w.dir); err != nil {
		w.log.Error("state", "err", err)
	}
	w.log.Info("container started", "container", c.spec.Name, "pid", p.rec.PID, "argv", argv, "log", logPath)
	w.setExec(c.spec.Name, &execTarget{image: c.spec.Image, netns: w.podNetnsPath(), mounts: mounts, env: env, dir: dir})
	go waitContainer(p, c.spec.Name, c.gen, w.exits, w.done)
	pctx, cancel := context.WithCancel(ctx)
	c.stopProb = cancel
	if c.spec.ReadinessProbe == nil {
		c.ready = true
	} else {
		go probe.Run(pctx, w.prober(c, probe.Readiness, c.spec.ReadinessProbe))
	}
	if c.spec.LivenessProbe != nil {
		go probe.Run(pctx, w.prober(c, probe.Liveness, c.spec.LivenessProbe))
	}
	return nil
}

// mounts writes the pod's resolv.conf (package poddns) and returns what
// the containers' mount namespaces mount: that file on /etc/resolv.conf,
// unless the pod just sees the node's.
func (w *podWorker) mounts() ([]bindMount, error) {
	cfg := &w.a.cfg
	host, err := os.ReadFile(cfg.ResolvConf)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("node resolv.conf: %w", err)
	}
	cluster := poddns.Cluster{Domain: cfg.ClusterDomain}
	for _, ip := range cfg.ClusterDNS {
		cluster.Nameservers = append(cluster.Nameservers, ip.String())
	}
	conf, useHost, err := poddns.ForPod(w.pod, cluster, host)
	if err != nil || useHost {
		return nil, err
	}
	if err := podenv.WriteFileAtomic(w.dir, resolvConfFile, conf.Render(), 0o644); err != nil {
		return nil, fmt.Errorf("pod resolv.conf: %w", err)
	}
	return []bindMount{{Source: filepath.Join(w.dir, resolvConfFile), Target: "/etc/resolv.conf"}}, nil
}

func (w *podWorker) prober(c *ctr, kind probe.Kind, p *v1.Probe) probe.Prober {
	host := ""
	if len(w.podIPs) > 0 {
		host = w.podIPs[0].String()
	}
	return probe.Prober{Kind: kind, Probe: p, Container: &c.spec, Host: host, NodeNetns: w.a.cfg.NodeNetns,
		Gen: c.gen, Out: w.probes, Exec: w.probeExec(c.spec.Name)}
}

// waitContainer reaps one container run and reports it.
func waitContainer(p *process, name string, gen int, out chan<- ctrExit, done <-chan struct{}) {
	info := p.wait()
	select {
	case out <- ctrExit{name: name, gen: gen, info: info}:
	case <-done:
	}
}

func (w *podWorker) byName(name string) *ctr {
	for _, c := range w.ctrs {
		if c.spec.Name == name {
			return c
		}
	}
	return nil
}

// handleExit records a run's end and schedules the restart the pod's
// restart policy asks for, with a doubling backoff.
func (w *podWorker) handleExit(e ctrExit) {
	c := w.byName(e.name)
	if c == nil || c.gen != e.gen || c.proc == nil {
		return
	}
	ran := e.info.at.Sub(c.proc.start)
	term := &v1.ContainerStateTerminated{
		ExitCode:    e.info.code,
		Reason:      "Completed",
		StartedAt:   metav1.NewTime(c.proc.start),
		FinishedAt:  metav1.NewTime(e.info.at),
		ContainerID: containerID(w.uid, c.spec.Name, c.gen),
	}
	if e.info.code != 0 {
		term.Reason = "Error"
		if e.info.signal != "" {
			term.Message = "killed by " + e.info.signal
		}
	}
	w.log.Info("container exited", "container", c.spec.Name, "code", e.info.code, "signal", e.info.signal, "ran", ran.Round(time.Millisecond))
	c.stopProb()
	w.setExec(c.spec.Name, nil)
	c.proc, c.ready, c.last = nil, false, term
	delete(w.rec.Processes, c.spec.Name)
	_ = w.rec.save(w.dir)
	policy := w.pod.Spec.RestartPolicy
	if policy == v1.RestartPolicyNever || (policy == v1.RestartPolicyOnFailure && e.info.code == 0) {
		c.final = true
		return
	}
	if ran >= backoffReset {
		c.backoff = w.a.cfg.RestartBackoff
	}
	c.restarts++
	c.startAt = time.Now().Add(c.backoff)
	c.waitMsg = fmt.Sprintf("back-off %v restarting failed container %s", c.backoff, c.spec.Name)
	c.backoff = min(2*c.backoff, w.a.cfg.MaxRestartBackoff)
}

func (w *podWorker) handleProbe(e probe.Event) {
	c := w.byName(e.Container)
	if c == nil || c.gen != e.Gen || c.proc == nil {
		return
	}
	switch e.Kind {
	case probe.Readiness:
		c.ready = e.OK
	case probe.Liveness:
		if !e.OK {
			w.log.Info("liveness probe failed: killing container", "container", c.spec.Name, "msg", e.Msg)
			c.proc.signal(syscall.SIGKILL)
		}
	}
}

func containerID(uid types.UID, name string, gen int) string {
	return fmt.Sprintf("nodeagent://%s-%s-%d", uid, name, gen)
}

// view is the worker's state as the status sees it.
func (w *podWorker) view() podstatus.View {
	v := podstatus.View{HostIP: w.a.cfg.NodeIP.String(), StartTime: w.startTime, SandboxReady: w.sandboxReady}
	for _, ip := range w.podIPs {
		v.PodIPs = append(v.PodIPs, ip.String())
	}
	for _, c := range w.ctrs {
		cv := podstatus.Container{Name: c.spec.Name, Image: c.spec.Image, Ready: c.ready, RestartCount: c.restarts,
			Terminated: c.last, WaitReason: c.waitWhy, WaitMessage: c.waitMsg}
		switch {
		case c.proc != nil:
			cv.Running, cv.StartedAt = true, c.proc.start
			cv.ContainerID = containerID(w.uid, c.spec.Name, c.gen)
		case c.final:
		case c.last != nil:
			cv.Restarting = true
		default:
			cv.Terminated = nil
			if w.sandboxErr != nil && cv.WaitReason == "" {
				cv.WaitMessage = w.sandboxErr.Error()
			}
		}
		v.Containers = append(v.Containers, cv)
	}
	return v
}

// pushStatus writes the status through the status subresource when it
// changed, on the newest copy of the pod (retrying on conflicts).
func (w *podWorker) pushStatus(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	pods := w.a.cfg.Client.CoreV1().Pods(w.pod.Namespace)
	view := w.view()
	if w.lastStatus != nil {
		next := podstatus.Compute(*w.lastStatus, w.pod, view, time.Now())
		if equality.Semantic.DeepEqual(&next, w.lastStatus) {
			return
		}
	}
	// First on the informer's copy; on a conflict, on a fresh one.
	p := w.current().DeepCopy()
	for range 5 {
		if p.UID != w.uid {
			return
		}
		p.Status = podstatus.Compute(p.Status, p, view, time.Now())
		up, err := pods.UpdateStatus(ctx, p, metav1.UpdateOptions{})
		if err == nil {
			st := up.Status
			w.lastStatus = &st
			return
		}
		if !apierrors.IsConflict(err) {
			if !apierrors.IsNotFound(err) && ctx.Err() == nil {
				w.log.Warn("status update", "err", err)
			}
			return
		}
		if p, err = pods.Get(ctx, w.pod.Name, metav1.GetOptions{}); err != nil {
			if !apierrors.IsNotFound(err) && ctx.Err() == nil {
				w.log.Warn("status: get pod", "err", err)
			}
			return
		}
	}
}

// finish stops every container (SIGTERM, then SIGKILL after grace),
// removes the pod's network and directory, and, when the pod was deleted
// through the API, completes the deletion (grace 0) as a kubelet does.
func (w *podWorker) finish(ctx context.Context, grace time.Duration, deleteObject bool) {
	w.stopAll(grace)
	if w.rec != nil {
		tctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		err := w.rec.teardown(tctx, w.log)
		cancel()
		if err != nil {
			w.log.Error("pod teardown", "err", err)
			return // keep the record: cleanup retries
		}
	}
	if err := os.RemoveAll(w.dir); err != nil {
		w.log.Error("pod directory", "err", err)
	}
	w.log.Info("pod stopped and its network removed")
	if !deleteObject || ctx.Err() != nil {
		return
	}
	zero := int64(0)
	err := w.a.cfg.Client.CoreV1().Pods(w.pod.Namespace).Delete(ctx, w.pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero,
		Preconditions:      &metav1.Preconditions{UID: &w.uid},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		w.log.Error("completing the pod's deletion", "err", err)
	}
}

// stopAll signals every running container and waits for all of them.
func (w *podWorker) stopAll(grace time.Duration) {
	running := 0
	for _, c := range w.ctrs {
		if c.proc != nil {
			c.stopProb()
			if grace > 0 {
				c.proc.signal(syscall.SIGTERM)
			} else {
				c.proc.signal(syscall.SIGKILL)
			}
			running++
		}
	}
	killAt := time.NewTimer(grace)
	defer killAt.Stop()
	giveUp := time.NewTimer(grace + killWait)
	defer giveUp.Stop()
	for running > 0 {
		select {
		case e := <-w.exits:
			if c := w.byName(e.name); c != nil && c.gen == e.gen && c.proc != nil {
				c.proc = nil
				w.setExec(c.spec.Name, nil)
				running--
				if w.rec != nil {
					delete(w.rec.Processes, c.spec.Name)
					_ = w.rec.save(w.dir)
				}
			}
		case <-killAt.C:
			for _, c := range w.ctrs {
				if c.proc != nil {
					w.log.Info("grace period over: SIGKILL", "container", c.spec.Name)
					c.proc.signal(syscall.SIGKILL)
				}
			}
		case <-giveUp.C:
			w.log.Error("containers did not exit after SIGKILL", "left", running)
			return
		}
	}
}
