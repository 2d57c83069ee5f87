package waypointctl

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"reflect"
	"sync"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"
	gwlisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"
)

// Defaults of [Config].
const (
	DefaultWorkers     = 2
	DefaultRetryBase   = 100 * time.Millisecond
	DefaultRetryMax    = 30 * time.Second
	DefaultCallTimeout = 10 * time.Second
)

// Config configures a [Controller].
type Config struct {
	// RESTConfig reaches the apiserver. Required.
	RESTConfig *rest.Config
	// Template is what every waypoint Deployment shares. Required fields:
	// see [Template].
	Template Template
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Workers reconcile distinct Gateways concurrently; default 2.
	Workers int
	// A failed reconciliation is retried after RetryBase, doubling up to
	// RetryMax (defaults 100 ms and 30 s).
	RetryBase, RetryMax time.Duration
	// CallTimeout bounds each API call; default 10 s.
	CallTimeout time.Duration
	// Now stamps condition transitions; default time.Now.
	Now func() time.Time
}

// Controller reconciles waypoint Gateways into their objects and status.
type Controller struct {
	cfg  Config
	log  *slog.Logger
	kube kubernetes.Interface
	gw   gwclient.Interface

	// Set by Run before the workers start.
	queue    workqueue.TypedRateLimitingInterface[key]
	gateways gwlisters.GatewayLister
	classes  gwlisters.GatewayClassLister
	deploys  appslisters.DeploymentLister
	services corelisters.ServiceLister
	accounts corelisters.ServiceAccountLister
}

// key is a queue item: a Gateway, or (class) a GatewayClass by name.
type key struct {
	class bool
	types.NamespacedName
}

// New checks cfg and builds the clients; it does not contact the apiserver.
func New(cfg Config) (*Controller, error) {
	if cfg.RESTConfig == nil {
		return nil, errors.New("waypointctl: Config.RESTConfig is required")
	}
	if err := cfg.Template.check(); err != nil {
		return nil, err
	}
	cfg.Template = cfg.Template.withDefaults()
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Workers <= 0 {
		cfg.Workers = DefaultWorkers
	}
	if cfg.RetryBase <= 0 {
		cfg.RetryBase = DefaultRetryBase
	}
	if cfg.RetryMax < cfg.RetryBase {
		cfg.RetryMax = max(DefaultRetryMax, cfg.RetryBase)
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	rc := rest.CopyConfig(cfg.RESTConfig)
	if rc.UserAgent == "" {
		rc.UserAgent = "istiod-lite"
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("waypointctl: kubernetes client for %s: %w", rc.Host, err)
	}
	gw, err := gwclient.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("waypointctl: gateway-api client for %s: %w", rc.Host, err)
	}
	return &Controller{cfg: cfg, log: cfg.Logger, kube: kube, gw: gw}, nil
}

// Run reconciles until ctx ends, then returns nil. Without the Gateway API
// CRDs it logs a warning and waits for ctx. It returns an error only if the
// informers cannot sync before ctx ends.
func (c *Controller) Run(ctx context.Context) error {
	ok, err := c.served(ctx)
	if err != nil {
		return err
	}
	if !ok {
		c.log.Warn("waypointctl: gateway.networking.k8s.io/v1 CRDs not installed; no waypoints are deployed (install manifests/crds and restart)")
		<-ctx.Done()
		return nil
	}

	// Only the objects the controller manages are cached, with their
	// managedFields (to tell what it applied).
	factory := informers.NewSharedInformerFactoryWithOptions(c.kube, 0,
		informers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = LabelManaged + "=" + ManagedValue }))
	gwFactory := gwinformers.NewSharedInformerFactoryWithOptions(c.gw, 0, gwinformers.WithTransform(stripManagedFields))
	deploys := factory.Apps().V1().Deployments()
	services := factory.Core().V1().Services()
	accounts := factory.Core().V1().ServiceAccounts()
	gateways := gwFactory.Gateway().V1().Gateways()
	classes := gwFactory.Gateway().V1().GatewayClasses()
	c.deploys, c.services, c.accounts = deploys.Lister(), services.Lister(), accounts.Lister()
	c.gateways, c.classes = gateways.Lister(), classes.Lister()

	c.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[key](c.cfg.RetryBase, c.cfg.RetryMax),
		workqueue.TypedRateLimitingQueueConfig[key]{Name: "waypoints"})
	defer c.queue.ShutDown()

	owned := cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueOwner,
		UpdateFunc: func(_, cur any) { c.enqueueOwner(cur) },
		DeleteFunc: c.enqueueOwner,
	}
	for _, inf := range []cache.SharedIndexInformer{deploys.Informer(), services.Informer(), accounts.Informer()} {
		if _, err := inf.AddEventHandler(owned); err != nil {
			return fmt.Errorf("waypointctl: watch: %w", err)
		}
	}
	if _, err := gateways.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueGateway,
		UpdateFunc: func(_, cur any) { c.enqueueGateway(cur) },
		DeleteFunc: c.enqueueGateway,
	}); err != nil {
		return fmt.Errorf("waypointctl: watch gateways: %w", err)
	}
	if _, err := classes.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    c.enqueueClass,
		UpdateFunc: func(_, cur any) { c.enqueueClass(cur) },
		DeleteFunc: c.enqueueClass,
	}); err != nil {
		return fmt.Errorf("waypointctl: watch gatewayclasses: %w", err)
	}

	factory.Start(ctx.Done())
	gwFactory.Start(ctx.Done())
	defer factory.Shutdown()
	defer gwFactory.Shutdown()
	for _, synced := range []map[reflect.Type]bool{factory.WaitForCacheSync(ctx.Done()), gwFactory.WaitForCacheSync(ctx.Done())} {
		for t, ok := range synced {
			if !ok {
				return fmt.Errorf("waypointctl: informer for %v did not sync: %w", t, context.Cause(ctx))
			}
		}
	}
	// Creates the class if it is missing even when no event comes.
	c.queue.Add(key{class: true, NamespacedName: types.NamespacedName{Name: GatewayClass}})
	c.log.Info("waypointctl: informers synced", "image", c.cfg.Template.Image)

	var wg sync.WaitGroup
	for range c.cfg.Workers {
		wg.Go(func() { c.reconcileWorker(ctx) })
	}
	<-ctx.Done()
	c.queue.ShutDown()
	wg.Wait()
	return nil
}

// reconcileWorker reconciles queue items until the queue shuts down.
func (c *Controller) reconcileWorker(ctx context.Context) {
	for {
		k, quit := c.queue.Get()
		if quit {
			return
		}
		var err error
		if k.class {
			err = c.reconcileClass(ctx, k.Name)
		} else {
			err = c.reconcileGateway(ctx, k.NamespacedName)
		}
		switch {
		case err == nil:
			c.queue.Forget(k)
		case ctx.Err() != nil:
		default:
			c.log.Warn("waypointctl: reconcile failed; retrying", "class", k.class, "namespace", k.Namespace, "name", k.Name,
				"retries", c.queue.NumRequeues(k), "err", err)
			c.queue.AddRateLimited(k)
		}
		c.queue.Done(k)
	}
}

func (c *Controller) enqueueGateway(obj any) {
	if m := objectMeta(obj); m != nil {
		c.queue.Add(key{NamespacedName: types.NamespacedName{Namespace: m.GetNamespace(), Name: m.GetName()}})
	}
}

// enqueueOwner enqueues the Gateway that controls a managed object.
func (c *Controller) enqueueOwner(obj any) {
	m := objectMeta(obj)
	if m == nil {
		return
	}
	name := m.GetLabels()[LabelGatewayName]
	if ref := metav1.GetControllerOf(m); ref != nil && ref.Kind == "Gateway" && ref.APIVersion == gatewayv1.GroupVersion.String() {
		name = ref.Name
	}
	if name != "" {
		c.queue.Add(key{NamespacedName: types.NamespacedName{Namespace: m.GetNamespace(), Name: name}})
	}
}

// enqueueClass enqueues a GatewayClass and every Gateway of it.
func (c *Controller) enqueueClass(obj any) {
	m := objectMeta(obj)
	if m == nil {
		return
	}
	c.queue.Add(key{class: true, NamespacedName: types.NamespacedName{Name: m.GetName()}})
	gws, _ := c.gateways.List(labels.Everything())
	for _, gw := range gws {
		if string(gw.Spec.GatewayClassName) == m.GetName() {
			c.queue.Add(key{NamespacedName: types.NamespacedName{Namespace: gw.Namespace, Name: gw.Name}})
		}
	}
}

// objectMeta unwraps informer tombstones.
func objectMeta(obj any) metav1.Object {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	m, err := apimeta.Accessor(obj)
	if err != nil {
		return nil
	}
	return m
}

func stripManagedFields(obj any) (any, error) {
	if m, err := apimeta.Accessor(obj); err == nil {
		m.SetManagedFields(nil)
	}
	return obj, nil
}

// reconcileClass creates GatewayClass istio-waypoint when it is missing
// (never updating it: users may manage it, as with Istio) and sets the
// Accepted condition of a class whose controllerName is MeshController.
func (c *Controller) reconcileClass(ctx context.Context, name string) error {
	gc, err := c.classes.Get(name)
	if apierrors.IsNotFound(err) {
		if name != GatewayClass {
			return nil
		}
		desc := ClassDescription
		ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
		defer cancel()
		_, err := c.gw.GatewayV1().GatewayClasses().Create(ctx, &gatewayv1.GatewayClass{
			ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec:       gatewayv1.GatewayClassSpec{ControllerName: MeshController, Description: &desc},
		}, metav1.CreateOptions{FieldManager: FieldManager})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create GatewayClass %s: %w", name, err)
		}
		if err == nil {
			c.log.Info("waypointctl: created GatewayClass", "name", name, "controllerName", string(MeshController))
		}
		return nil // its add event brings it back for status
	}
	if err != nil {
		return err
	}
	if gc.Spec.ControllerName != MeshController {
		return nil
	}
	conds := ClassConditions(gc, metav1.NewTime(c.cfg.Now()))
	if equality.Semantic.DeepEqual(conds, gc.Status.Conditions) {
		return nil
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": conds}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer cancel()
	_, err = c.gw.GatewayV1().GatewayClasses().Patch(ctx, name, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: FieldManager}, "status")
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("write GatewayClass %s status: %w", name, err)
	}
	return nil
}

// reconcileGateway applies a waypoint Gateway's objects (when it passes
// [Check]) and writes its status. Gateways of other classes, and of a
// class that is not MeshController's, are left alone. Objects of a
// deleted Gateway are garbage-collected through their owner references.
func (c *Controller) reconcileGateway(ctx context.Context, nn types.NamespacedName) error {
	gw, err := c.gateways.Gateways(nn.Namespace).Get(nn.Name)
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	gc, err := c.classes.Get(string(gw.Spec.GatewayClassName))
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	if gc.Spec.ControllerName != MeshController {
		return nil
	}

	checkErr := Check(gw)
	var applyErr error
	if checkErr == nil {
		applyErr = c.apply(ctx, gw)
	}
	obs := Observed{ApplyErr: applyErr}
	if d, err := c.deploys.Deployments(nn.Namespace).Get(nn.Name); err == nil && metav1.IsControlledBy(d, gw) {
		obs.Deployment = d
	}
	if s, err := c.services.Services(nn.Namespace).Get(nn.Name); err == nil && metav1.IsControlledBy(s, gw) {
		obs.Service = s
	}
	st := GatewayStatus(gw, checkErr, obs, c.cfg.Template.ClusterDomain, metav1.NewTime(c.cfg.Now()))
	if err := c.writeStatus(ctx, gw, st); err != nil {
		return errors.Join(applyErr, err)
	}
	return applyErr
}

// apply server-side applies the ServiceAccount, Deployment and Service of
// gw, each only when what the controller owns of it differs from
// [Desired]: a re-apply would be a no-op anyway, this saves the calls.
// Force takes back fields someone else changed (drift repair).
func (c *Controller) apply(ctx context.Context, gw *gatewayv1.Gateway) error {
	sa, deploy, svc := Desired(gw, c.cfg.Template)
	ns := gw.Namespace
	curSA, _ := c.accounts.ServiceAccounts(ns).Get(gw.Name)
	curDeploy, _ := c.deploys.Deployments(ns).Get(gw.Name)
	curSvc, _ := c.services.Services(ns).Get(gw.Name)
	var errs []error
	// The ServiceAccount first: the Deployment's pods need it.
	errs = append(errs, applyIfChanged(ctx, c, "ServiceAccount", curSA, corev1ac.ExtractServiceAccount, sa, c.kube.CoreV1().ServiceAccounts(ns).Apply))
	errs = append(errs, applyIfChanged(ctx, c, "Deployment", curDeploy, appsv1ac.ExtractDeployment, deploy, c.kube.AppsV1().Deployments(ns).Apply))
	errs = append(errs, applyIfChanged(ctx, c, "Service", curSvc, corev1ac.ExtractService, svc, c.kube.CoreV1().Services(ns).Apply))
	return errors.Join(errs...)
}

// applyIfChanged applies desired unless cur (from the informer cache, nil
// when missing) already holds exactly desired as the controller's applied
// fields.
func applyIfChanged[O interface {
	*corev1.ServiceAccount | *appsv1.Deployment | *corev1.Service
	metav1.Object
}, A any](ctx context.Context, c *Controller, kind string, cur O,
	extract func(O, string) (A, error), desired A,
	apply func(context.Context, A, metav1.ApplyOptions) (O, error),
) error {
	if cur != nil {
		if have, err := extract(cur, FieldManager); err == nil && sameJSON(have, desired) {
			return nil
		}
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer cancel()
	got, err := apply(ctx, desired, metav1.ApplyOptions{FieldManager: FieldManager, Force: true})
	if err != nil {
		return fmt.Errorf("apply %s: %w", kind, err)
	}
	c.log.Info("waypointctl: applied", "kind", kind, "namespace", got.GetNamespace(), "name", got.GetName(),
		"created", cur == nil, "resourceVersion", got.GetResourceVersion())
	return nil
}

func sameJSON(a, b any) bool {
	ja, err1 := json.Marshal(a)
	jb, err2 := json.Marshal(b)
	return err1 == nil && err2 == nil && string(ja) == string(jb)
}

// writeStatus patches gw's status when addresses, conditions or listeners
// differ from st. A merge patch replaces those lists whole: the controller
// is the only writer of a waypoint Gateway's status.
func (c *Controller) writeStatus(ctx context.Context, gw *gatewayv1.Gateway, st gatewayv1.GatewayStatus) error {
	if equality.Semantic.DeepEqual(st.Addresses, gw.Status.Addresses) &&
		equality.Semantic.DeepEqual(st.Conditions, gw.Status.Conditions) &&
		equality.Semantic.DeepEqual(st.Listeners, gw.Status.Listeners) {
		return nil
	}
	// Non-nil slices: an empty list must clear the old one, not be left out.
	nonNil := func(v any) any {
		if reflect.ValueOf(v).IsNil() {
			return []any{}
		}
		return v
	}
	patch, err := json.Marshal(map[string]any{"status": map[string]any{
		"addresses":  nonNil(st.Addresses),
		"conditions": nonNil(st.Conditions),
		"listeners":  nonNil(st.Listeners),
	}})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer cancel()
	_, err = c.gw.GatewayV1().Gateways(gw.Namespace).Patch(ctx, gw.Name, types.MergePatchType, patch,
		metav1.PatchOptions{FieldManager: FieldManager}, "status")
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("write Gateway %s/%s status: %w", gw.Namespace, gw.Name, err)
	}
	return nil
}

// served reports whether the apiserver serves Gateways and GatewayClasses
// (gateway.networking.k8s.io/v1), as package controller checks it.
func (c *Controller) served(ctx context.Context) (bool, error) {
	gv := gatewayv1.GroupVersion.String()
	ctx, cancel := context.WithTimeout(ctx, c.cfg.CallTimeout)
	defer cancel()
	raw, err := c.kube.Discovery().RESTClient().Get().AbsPath("/apis", gv).Do(ctx).Raw()
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("waypointctl: discover %s: %w", gv, err)
	}
	var rl metav1.APIResourceList
	if err := json.Unmarshal(raw, &rl); err != nil {
		return false, fmt.Errorf("waypointctl: discover %s: %w", gv, err)
	}
	have := map[string]bool{}
	for _, r := range rl.APIResources {
		have[r.Name] = true
	}
	return have["gateways"] && have["gatewayclasses"], nil
}
