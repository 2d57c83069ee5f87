package rootca

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// Defaults of [PublisherConfig].
const (
	DefaultResync     = 10 * time.Minute
	DefaultRetryDelay = 2 * time.Second
)

// PublisherConfig configures a [Publisher].
type PublisherConfig struct {
	// Client reaches the apiserver. Required.
	Client kubernetes.Interface
	// Namespace gets the ConfigMap. Required.
	Namespace string
	// RootsPEM is the content of root-cert.pem. Required.
	RootsPEM []byte
	// Resync re-checks the ConfigMap even without events (default 10 min);
	// RetryDelay spaces retries after a failed write (default 2 s).
	Resync, RetryDelay time.Duration
	// Logger defaults to discarding.
	Logger *slog.Logger
}

// Publisher keeps ConfigMap istio-ca-root-cert equal to the roots.
type Publisher struct {
	cfg       PublisherConfig
	log       *slog.Logger
	published chan struct{} // closed after the first successful write or check
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
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Publisher{cfg: cfg, log: log, published: make(chan struct{})}, nil
}

// Published is closed once the ConfigMap has held the roots.
func (p *Publisher) Published() <-chan struct{} { return p.published }

// Run watches the ConfigMap and rewrites it whenever it differs from the
// roots, until ctx ends; it then returns nil. Write failures are logged and
// retried.
func (p *Publisher) Run(ctx context.Context) error {
	trigger := make(chan struct{}, 1)
	poke := func() {
		select {
		case trigger <- struct{}{}:
		default:
		}
	}
	factory := informers.NewSharedInformerFactoryWithOptions(p.cfg.Client, p.cfg.Resync,
		informers.WithNamespace(p.cfg.Namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", RootConfigMap).String()
		}))
	inf := factory.Core().V1().ConfigMaps().Informer()
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { poke() },
		UpdateFunc: func(any, any) { poke() },
		DeleteFunc: func(any) { poke() },
	}); err != nil {
		return fmt.Errorf("rootca: watch ConfigMap %s/%s: %w", p.cfg.Namespace, RootConfigMap, err)
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()

	poke() // publish at once, without waiting for the watch
	retry := time.NewTimer(0)
	retry.Stop()
	defer retry.Stop()
	// The watch is the fast path; this re-check also covers an event the
	// watch never delivered (e.g. a deletion before it started).
	recheck := time.NewTicker(p.cfg.Resync)
	defer recheck.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-trigger:
		case <-retry.C:
		case <-recheck.C:
		}
		if err := p.reconcile(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			p.log.Warn("rootca: publish root certificate failed; retrying", "configmap", p.cfg.Namespace+"/"+RootConfigMap, "err", err)
			retry.Reset(p.cfg.RetryDelay)
			continue
		}
		select {
		case <-p.published:
		default:
			close(p.published)
		}
	}
}

// reconcile creates or updates the ConfigMap if it differs.
func (p *Publisher) reconcile(ctx context.Context) error {
	cms := p.cfg.Client.CoreV1().ConfigMaps(p.cfg.Namespace)
	want := string(p.cfg.RootsPEM)
	cm, err := cms.Get(ctx, RootConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = cms.Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: RootConfigMap, Namespace: p.cfg.Namespace, Labels: map[string]string{"istio.io/config": "true"}},
			Data:       map[string]string{RootConfigMapKey: want},
		}, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create ConfigMap: %w", err)
		}
		p.log.Info("rootca: published root certificate", "configmap", p.cfg.Namespace+"/"+RootConfigMap)
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
	p.log.Info("rootca: restored root certificate", "configmap", p.cfg.Namespace+"/"+RootConfigMap)
	return nil
}
