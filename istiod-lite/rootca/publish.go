package rootca

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
)

// Defaults of [PublisherConfig].
const (
	DefaultResync     = 10 * time.Minute
	DefaultRetryDelay = 2 * time.Second
)

// DefaultSkipNamespaces get no ConfigMap: no workload of the mesh runs
// there (Istio's namespace controller skips them too).
var DefaultSkipNamespaces = []string{"kube-system", "kube-public", "kube-node-lease"}

// PublisherConfig configures a [Publisher].
type PublisherConfig struct {
	// Client reaches the apiserver. Required.
	Client kubernetes.Interface
	// Namespace is the CA's namespace; it always gets the ConfigMap.
	// Required.
	Namespace string
	// AllNamespaces publishes the ConfigMap in every namespace (but
	// SkipNamespaces), as Istio does, so that pods anywhere (waypoints,
	// workloads) can mount the root; new namespaces get it when they
	// appear. Otherwise only Namespace gets it.
	AllNamespaces bool
	// SkipNamespaces, with AllNamespaces; nil: DefaultSkipNamespaces.
	SkipNamespaces []string
	// RootsPEM is the content of root-cert.pem. Required.
	RootsPEM []byte
	// Resync re-checks every ConfigMap even without events (default 10
	// min); RetryDelay spaces retries after a failed write (default 2 s).
	Resync, RetryDelay time.Duration
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Publisher keeps ConfigMap istio-ca-root-cert equal to the roots.
type Publisher struct {
	cfg       PublisherConfig
	log       *slog.Logger
	published chan struct{} // closed after the first successful write or check in Namespace

	mu    sync.Mutex          // guards dirty
	dirty map[string]struct{} // namespaces to reconcile
	kick  chan struct{}
}

// NewPublisher checks cfg.
func NewPublisher(cfg PublisherConfig) (*Publisher, error) {
	if cfg.Client == nil || cfg.Namespace == "" || len(cfg.RootsPEM) == 0 {
		return nil, errors.New("rootca: PublisherConfig.Client, Namespace and RootsPEM are required")
	}
	if cfg.Resync <= 0 {
		cfg.Resync = DefaultResync
	}
	if cfg.RetryDelay <= 0 {
		cfg.RetryDelay = DefaultRetryDelay
	}
	if cfg.SkipNamespaces == nil {
		cfg.SkipNamespaces = DefaultSkipNamespaces
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Publisher{cfg: cfg, log: log, published: make(chan struct{}),
		dirty: map[string]struct{}{}, kick: make(chan struct{}, 1)}, nil
}

// Published is closed once the ConfigMap in the CA's namespace has held
// the roots.
func (p *Publisher) Published() <-chan struct{} { return p.published }

// mark queues namespaces for a reconcile.
func (p *Publisher) mark(namespaces ...string) {
	p.mu.Lock()
	for _, ns := range namespaces {
		if ns == p.cfg.Namespace || (p.cfg.AllNamespaces && !slices.Contains(p.cfg.SkipNamespaces, ns)) {
			p.dirty[ns] = struct{}{}
		}
	}
	p.mu.Unlock()
	select {
	case p.kick <- struct{}{}:
	default:
	}
}

// take empties the queue.
func (p *Publisher) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, 0, len(p.dirty))
	for ns := range p.dirty {
		out = append(out, ns)
	}
	clear(p.dirty)
	slices.Sort(out)
	return out
}

// Run watches the ConfigMaps (and, with AllNamespaces, the namespaces) and
// rewrites a ConfigMap whenever it differs from the roots, until ctx ends;
// it then returns nil. Write failures are logged and retried.
func (p *Publisher) Run(ctx context.Context) error {
	scope := p.cfg.Namespace
	if p.cfg.AllNamespaces {
		scope = metav1.NamespaceAll
	}
	cmFactory := informers.NewSharedInformerFactoryWithOptions(p.cfg.Client, p.cfg.Resync,
		informers.WithNamespace(scope),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", RootConfigMap).String()
		}))
	onCM := func(obj any) {
		if tomb, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		if cm, ok := obj.(*corev1.ConfigMap); ok {
			p.mark(cm.Namespace)
		}
	}
	if _, err := cmFactory.Core().V1().ConfigMaps().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: onCM, UpdateFunc: func(_, o any) { onCM(o) }, DeleteFunc: onCM,
	}); err != nil {
		return fmt.Errorf("rootca: watch ConfigMaps %s: %w", RootConfigMap, err)
	}
	cmFactory.Start(ctx.Done())
	defer cmFactory.Shutdown()

	// With AllNamespaces, the namespaces to publish in; nil otherwise.
	var nsLister corev1listers.NamespaceLister
	if p.cfg.AllNamespaces {
		nsFactory := informers.NewSharedInformerFactory(p.cfg.Client, p.cfg.Resync)
		nsInf := nsFactory.Core().V1().Namespaces()
		onNS := func(obj any) {
			if ns, ok := obj.(*corev1.Namespace); ok && ns.Status.Phase != corev1.NamespaceTerminating {
				p.mark(ns.Name)
			}
		}
		if _, err := nsInf.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc: onNS, UpdateFunc: func(_, o any) { onNS(o) },
		}); err != nil {
			return fmt.Errorf("rootca: watch namespaces: %w", err)
		}
		nsLister = nsInf.Lister()
		nsFactory.Start(ctx.Done())
		defer nsFactory.Shutdown()
	}

	p.mark(p.cfg.Namespace) // publish at once, without waiting for the watch
	retry := time.NewTimer(0)
	retry.Stop()
	defer retry.Stop()
	// The watches are the fast path; this re-check also covers an event a
	// watch never delivered (e.g. a deletion before it started).
	recheck := time.NewTicker(p.cfg.Resync)
	defer recheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-p.kick:
		case <-retry.C:
		case <-recheck.C:
			p.mark(p.cfg.Namespace)
			if nsLister != nil {
				if all, err := nsLister.List(labels.Everything()); err == nil {
					for _, ns := range all {
						p.mark(ns.Name)
					}
				}
			}
		}
		for _, ns := range p.take() {
			if nsLister != nil && ns != p.cfg.Namespace {
				n, err := nsLister.Get(ns)
				if err != nil || n.Status.Phase == corev1.NamespaceTerminating {
					continue // gone or going: nothing to publish there
				}
			}
			if err := p.reconcile(ctx, ns); err != nil {
				if ctx.Err() != nil {
					return nil
				}
				p.log.Warn("rootca: publish root certificate failed; retrying", "configmap", ns+"/"+RootConfigMap, "err", err)
				p.mu.Lock()
				p.dirty[ns] = struct{}{}
				p.mu.Unlock()
				retry.Reset(p.cfg.RetryDelay)
				continue
			}
			if ns == p.cfg.Namespace {
				select {
				case <-p.published:
				default:
					close(p.published)
				}
			}
		}
	}
}

// reconcile creates or updates ns's ConfigMap if it differs.
func (p *Publisher) reconcile(ctx context.Context, ns string) error {
	cms := p.cfg.Client.CoreV1().ConfigMaps(ns)
	want := string(p.cfg.RootsPEM)
	cm, err := cms.Get(ctx, RootConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootConfigMap, Namespace: ns, Labels: map[string]string{"istio.io/config": "true"}},
			Data:       map[string]string{RootConfigMapKey: want},
		}, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			return p.reconcile(ctx, ns) // created meanwhile: check its content
		}
		if err != nil {
			return fmt.Errorf("create ConfigMap: %w", err)
		}
		p.log.Info("rootca: published root certificate", "configmap", ns+"/"+RootConfigMap)
		return nil
	case err != nil:
		return fmt.Errorf("get ConfigMap: %w", err)
	}
	if bytes.Equal([]byte(cm.Data[RootConfigMapKey]), p.cfg.RootsPEM) {
		return nil
	}
	cm = cm.DeepCopy()
	if cm.Data == nil {
		cm.Data = map[string]string{}
	}
	cm.Data[RootConfigMapKey] = want
	if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("update ConfigMap: %w", err)
	}
	p.log.Info("rootca: restored root certificate", "configmap", ns+"/"+RootConfigMap)
	return nil
}
