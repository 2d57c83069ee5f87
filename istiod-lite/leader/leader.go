// Package leader elects one istiod-lite replica, with a coordination.k8s.io
// Lease (client-go's leaderelection), to run what writes to the cluster:
// the root ConfigMap publisher, the waypoint deployment controller and
// status. Every replica serves the CA and xDS; only the elected one writes,
// so two replicas (or the old and new pod of a rolling update) never fight
// over the same objects. Istio's istiod elects its writers the same way.
//
// [Elector.Run] campaigns; while this replica holds the Lease it runs the
// lead function, whose context ends when the Lease is lost or Run's context
// ends. The Lease is released only after lead has returned, so a successor
// never overlaps with it in this process's view; after a loss it campaigns
// again.
package leader

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync/atomic"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/leaderelection"
	"k8s.io/client-go/tools/leaderelection/resourcelock"
)

// Defaults of [Config], those of kube-controller-manager.
const (
	DefaultName          = "istiod-lite-leader"
	DefaultLeaseDuration = 15 * time.Second
	DefaultRenewDeadline = 10 * time.Second
	DefaultRetryPeriod   = 2 * time.Second
)

// Config configures an [Elector].
type Config struct {
	// Client reaches the apiserver. Required.
	Client kubernetes.Interface
	// Namespace and Name of the Lease. Namespace is required; Name
	// defaults to DefaultName.
	Namespace, Name string
	// Identity of this replica in the Lease; default the host name (the
	// pod's name) and the process id.
	Identity string
	// LeaseDuration, RenewDeadline and RetryPeriod as in client-go's
	// leaderelection; defaults above. A replica that stops renewing is
	// replaced after LeaseDuration; one that shuts down releases the Lease
	// at once.
	LeaseDuration, RenewDeadline, RetryPeriod time.Duration
	// Logger defaults to slog.Default().
	Logger *slog.Logger
}

// Elector campaigns for the Lease.
type Elector struct {
	cfg     Config
	log     *slog.Logger
	leading atomic.Bool
	leader  atomic.Pointer[string] // the Lease's holder as last observed
}

// New checks cfg and fills in defaults.
func New(cfg Config) (*Elector, error) {
	if cfg.Client == nil {
		return nil, errors.New("leader: Config.Client is required")
	}
	if cfg.Namespace == "" {
		return nil, errors.New("leader: Config.Namespace is required")
	}
	if cfg.Name == "" {
		cfg.Name = DefaultName
	}
	if cfg.Identity == "" {
		host, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("leader: identity: %w", err)
		}
		cfg.Identity = fmt.Sprintf("%s_%d", host, os.Getpid())
	}
	if cfg.LeaseDuration <= 0 {
		cfg.LeaseDuration = DefaultLeaseDuration
	}
	if cfg.RenewDeadline <= 0 {
		cfg.RenewDeadline = DefaultRenewDeadline
	}
	if cfg.RetryPeriod <= 0 {
		cfg.RetryPeriod = DefaultRetryPeriod
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	e := &Elector{cfg: cfg, log: cfg.Logger}
	e.leader.Store(new(string))
	return e, nil
}

// Name is the Lease's name.
func (e *Elector) Name() string { return e.cfg.Name }

// Identity is this replica's identity in the Lease.
func (e *Elector) Identity() string { return e.cfg.Identity }

// Leading reports whether this replica holds the Lease and runs lead.
func (e *Elector) Leading() bool { return e.leading.Load() }

// Leader is the Lease's holder as last observed ("" before any).
func (e *Elector) Leader() string { return *e.leader.Load() }

// Run campaigns until ctx ends, running lead in each term this replica
// holds the Lease. It returns nil when ctx ends, or lead's error: a writer
// that fails stops the replica, as any failing component does.
func (e *Elector) Run(ctx context.Context, lead func(context.Context) error) error {
	for ctx.Err() == nil {
		if err := e.term(ctx, lead); err != nil {
			return err
		}
	}
	return nil
}

// term campaigns once and, if elected, leads until the Lease is lost, ctx
// ends or lead returns; then it releases the Lease.
func (e *Elector) term(ctx context.Context, lead func(context.Context) error) error {
	lease := e.cfg.Namespace + "/" + e.cfg.Name
	// The election outlives ctx until lead has returned: client-go releases
	// the Lease as soon as its context ends, and no successor may start
	// while this replica's writers still run.
	electCtx, endElection := context.WithCancel(context.WithoutCancel(ctx))
	defer endElection()
	elected := make(chan context.Context, 1) // the term's context, ending when the Lease is lost
	le, err := leaderelection.NewLeaderElector(leaderelection.LeaderElectionConfig{
		Lock: &resourcelock.LeaseLock{
			LeaseMeta:  metav1.ObjectMeta{Namespace: e.cfg.Namespace, Name: e.cfg.Name},
			Client:     e.cfg.Client.CoordinationV1(),
			LockConfig: resourcelock.ResourceLockConfig{Identity: e.cfg.Identity},
		},
		LeaseDuration:   e.cfg.LeaseDuration,
		RenewDeadline:   e.cfg.RenewDeadline,
		RetryPeriod:     e.cfg.RetryPeriod,
		ReleaseOnCancel: true,
		Name:            e.cfg.Name,
		Callbacks: leaderelection.LeaderCallbacks{
			OnStartedLeading: func(termCtx context.Context) { elected <- termCtx },
			OnStoppedLeading: func() {},
			OnNewLeader: func(id string) {
				e.leader.Store(&id)
				if id != e.cfg.Identity {
					e.log.Info("leader: another replica leads", "lease", lease, "leader", id)
				}
			},
		},
	})
	if err != nil {
		return fmt.Errorf("leader: %w", err)
	}
	ran := make(chan struct{})
	go func() {
		defer close(ran)
		le.Run(electCtx)
	}()

	var termCtx context.Context
	select {
	case termCtx = <-elected:
	case <-ran: // the Lease was lost before this goroutine saw the election
		return nil
	case <-ctx.Done():
		endElection()
		<-ran
		return nil
	}
	leadCtx, cancel := context.WithCancel(termCtx)
	defer cancel()
	defer context.AfterFunc(ctx, cancel)()
	e.leading.Store(true)
	e.log.Info("leader: elected; running the writers", "lease", lease, "identity", e.cfg.Identity)
	err = lead(leadCtx)
	e.leading.Store(false)
	e.log.Info("leader: writers stopped", "lease", lease, "err", err)
	endElection()
	<-ran
	return err
}
