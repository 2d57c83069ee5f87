package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"reflect"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/proto"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayv1beta1 "sigs.k8s.io/gateway-api/apis/v1beta1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"
	gwinformers "sigs.k8s.io/gateway-api/pkg/client/informers/externalversions"

	"github.com/ambientmesh/ambient/istiod-lite/translate"
	"github.com/ambientmesh/ambient/istiod-lite/xds"
)

// Defaults.
const (
	DefaultDebounce      = 50 * time.Millisecond
	DefaultDebounceMax   = time.Second
	DefaultRootNamespace = "istio-system"
)

// GVRs of the policy CRDs the controller watches.
var (
	AuthorizationPolicies = schema.GroupVersionResource{Group: translate.Group, Version: "v1", Resource: "authorizationpolicies"}
	PeerAuthentications   = schema.GroupVersionResource{Group: translate.Group, Version: "v1", Resource: "peerauthentications"}
	// DestinationRules and LocalTrafficPolicies become the waypoints'
	// resilience policies; each is watched when its CRD is served.
	DestinationRules     = schema.GroupVersionResource{Group: translate.NetworkingGroup, Version: "v1", Resource: "destinationrules"}
	LocalTrafficPolicies = schema.GroupVersionResource{Group: translate.AmbientPolicyGroup, Version: "v1alpha1", Resource: "localtrafficpolicies"}
)

// Resources of the Gateway API (gateway.networking.k8s.io/v1) the
// controller watches when their CRDs are installed.
var (
	Gateways       = gatewayv1.SchemeGroupVersion.WithResource("gateways")
	GatewayClasses = gatewayv1.SchemeGroupVersion.WithResource("gatewayclasses")
	HTTPRoutes     = gatewayv1.SchemeGroupVersion.WithResource("httproutes")
	// GRPCRoutes are watched when their CRD is installed too (it came to
	// the standard channel after the others).
	GRPCRoutes = gatewayv1.SchemeGroupVersion.WithResource("grpcroutes")
	// ReferenceGrants are watched as v1 (Gateway API v1.5 and later);
	// ReferenceGrantsV1beta1 when older CRDs serve only that version.
	ReferenceGrants        = gatewayv1.SchemeGroupVersion.WithResource("referencegrants")
	ReferenceGrantsV1beta1 = gatewayv1beta1.SchemeGroupVersion.WithResource("referencegrants")
)

// Config configures a [Controller].
type Config struct {
	// RESTConfig reaches the apiserver. Required.
	RESTConfig *rest.Config
	// Cache receives the resources. Required.
	Cache *xds.Cache
	// Translate is the mesh-wide translation config (trust domain, ...).
	Translate translate.Config
	// RootNamespace holds mesh-wide policies; default "istio-system".
	RootNamespace string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// Debounce is the quiet time after the last event before a
	// recomputation (default 50 ms); DebounceMax caps the wait after the
	// first event (default 1 s).
	Debounce, DebounceMax time.Duration
	// DisableStatus turns off writing AuthorizationPolicy and HTTPRoute
	// status.
	DisableStatus bool
	// Leading, if set, says whether this replica is the elected writer
	// (package leader): only then is status written. Call Resync when it
	// becomes true. Nil: always.
	Leading func() bool
}

// Controller watches the cluster and keeps Config.Cache current.
type Controller struct {
	cfg Config
	log *slog.Logger

	kube kubernetes.Interface
	dyn  dynamic.Interface
	gw   gwclient.Interface

	// Owned by Run's goroutine: the deterministic encodings of the last
	// resource sets handed to the cache, by name.
	prevAddrs  map[string][]byte
	prevAuthz  map[string][]byte
	prevRoutes map[string][]byte
	prevWPPols map[string][]byte
	prevRes    map[string][]byte
	// warned holds the invalid annotations already logged, so each is
	// logged once per appearance rather than once per recomputation.
	warned map[string]string

	synced  chan struct{} // closed after the first recomputation
	trigger chan struct{} // poked by events and Resync; debounced by Run

	// gateways is the Gateway lister once the informers run (nil before,
	// and without the Gateway API CRDs), for IsWaypoint.
	gateways atomic.Pointer[cache.GenericLister]
}

// IsWaypoint reports whether namespace/serviceAccount is a waypoint's
// ServiceAccount: the waypoint controller names it after a Gateway of class
// istio-waypoint in that namespace. It is false until the informers have
// synced.
func (c *Controller) IsWaypoint(namespace, serviceAccount string) bool {
	l := c.gateways.Load()
	if l == nil {
		return false
	}
	obj, err := (*l).ByNamespace(namespace).Get(serviceAccount)
	if err != nil {
		return false
	}
	gw, ok := obj.(*gatewayv1.Gateway)
	return ok && gw.Spec.GatewayClassName == translate.GatewayClassWaypoint
}

// New validates cfg and builds the clients; it does not contact the
// apiserver.
func New(cfg Config) (*Controller, error) {
	if cfg.RESTConfig == nil {
		return nil, errors.New("controller: Config.RESTConfig is required")
	}
	if cfg.Cache == nil {
		return nil, errors.New("controller: Config.Cache is required")
	}
	if cfg.RootNamespace == "" {
		cfg.RootNamespace = DefaultRootNamespace
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Debounce <= 0 {
		cfg.Debounce = DefaultDebounce
	}
	if cfg.DebounceMax < cfg.Debounce {
		cfg.DebounceMax = max(DefaultDebounceMax, cfg.Debounce)
	}
	rc := rest.CopyConfig(cfg.RESTConfig)
	if rc.UserAgent == "" {
		rc.UserAgent = "istiod-lite"
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("controller: kubernetes client for %s: %w", rc.Host, err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("controller: dynamic client for %s: %w", rc.Host, err)
	}
	gw, err := gwclient.NewForConfig(rc)
	if err != nil {
		return nil, fmt.Errorf("controller: gateway-api client for %s: %w", rc.Host, err)
	}
	return &Controller{
		cfg: cfg, log: cfg.Logger, kube: kube, dyn: dyn, gw: gw,
		prevAddrs:  map[string][]byte{},
		prevAuthz:  map[string][]byte{},
		prevRoutes: map[string][]byte{},
		prevWPPols: map[string][]byte{},
		prevRes:    map[string][]byte{},
		synced:     make(chan struct{}),
		trigger:    make(chan struct{}, 1),
	}, nil
}

// Resync asks Run for a recomputation, as an event would: a replica just
// elected writes the status its predecessor left.
func (c *Controller) Resync() { poke(c.trigger) }

// writesStatus reports whether this replica writes status now.
func (c *Controller) writesStatus() bool {
	return !c.cfg.DisableStatus && (c.cfg.Leading == nil || c.cfg.Leading())
}

// Synced is closed once the informers have synced and the cache holds the
// first full translation.
func (c *Controller) Synced() <-chan struct{} { return c.synced }

// listers are the informer caches one recomputation reads.
type listers struct {
	ns, pods, svcs, nodes, slices cache.GenericLister
	// sas: ServiceAccounts, watched for workload identity as Istio does.
	// Nothing reads them yet: the waypoint issue (the identities a
	// waypoint serves) is expected to be the first reader.
	sas      cache.GenericLister
	aps, pas cache.GenericLister // nil without the security.istio.io CRDs
	// Nil without the Gateway API CRDs.
	gateways, gatewayClasses, httpRoutes cache.GenericLister
	// grpcRoutes: nil without the GRPCRoute CRD.
	grpcRoutes cache.GenericLister
	// refGrants: nil without the ReferenceGrant CRD; it holds
	// *gatewayv1.ReferenceGrant or, from CRDs that serve only v1beta1,
	// *gatewayv1beta1.ReferenceGrant (see listReferenceGrants).
	refGrants cache.GenericLister
	// Nil without the networking.istio.io (DestinationRule) or
	// policy.ambientmesh.io (LocalTrafficPolicy) CRD.
	drs, ltps cache.GenericLister
}

// Run watches until ctx is done, then returns nil. It returns an error only
// if the informers cannot sync before ctx ends or the cache rejects an update.
func (c *Controller) Run(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()

	handler := cache.ResourceEventHandlerFuncs{
		AddFunc: func(any) { poke(c.trigger) },
		UpdateFunc: func(old, cur any) {
			if !sameForTranslation(old, cur) {
				poke(c.trigger)
			}
		},
		DeleteFunc: func(any) { poke(c.trigger) },
	}
	type watched struct {
		inf    cache.SharedIndexInformer
		lister *cache.GenericLister
		gr     schema.GroupResource
	}
	watch := func(ws ...watched) error {
		for _, w := range ws {
			if _, err := w.inf.AddEventHandler(handler); err != nil {
				return fmt.Errorf("controller: watch %s: %w", w.gr, err)
			}
			*w.lister = cache.NewGenericLister(w.inf.GetIndexer(), w.gr)
		}
		return nil
	}

	factory := informers.NewSharedInformerFactoryWithOptions(c.kube, 0, informers.WithTransform(stripObject))
	core := factory.Core().V1()
	var l listers
	if err := watch(
		watched{core.Namespaces().Informer(), &l.ns, corev1.Resource("namespaces")},
		watched{core.Pods().Informer(), &l.pods, corev1.Resource("pods")},
		watched{core.Services().Informer(), &l.svcs, corev1.Resource("services")},
		watched{core.Nodes().Informer(), &l.nodes, corev1.Resource("nodes")},
		watched{core.ServiceAccounts().Informer(), &l.sas, corev1.Resource("serviceaccounts")},
		watched{factory.Discovery().V1().EndpointSlices().Informer(), &l.slices, discoveryv1.Resource("endpointslices")},
	); err != nil {
		return err
	}

	gwFactory := gwinformers.NewSharedInformerFactoryWithOptions(c.gw, 0, gwinformers.WithTransform(stripObject))
	if ok, err := c.served(Gateways, GatewayClasses, HTTPRoutes); err != nil {
		return err
	} else if ok {
		gwv1 := gwFactory.Gateway().V1()
		if err := watch(
			watched{gwv1.Gateways().Informer(), &l.gateways, Gateways.GroupResource()},
			watched{gwv1.GatewayClasses().Informer(), &l.gatewayClasses, GatewayClasses.GroupResource()},
			watched{gwv1.HTTPRoutes().Informer(), &l.httpRoutes, HTTPRoutes.GroupResource()},
		); err != nil {
			return err
		}
		if ok, err := c.served(GRPCRoutes); err != nil {
			return err
		} else if ok {
			if err := watch(watched{gwv1.GRPCRoutes().Informer(), &l.grpcRoutes, GRPCRoutes.GroupResource()}); err != nil {
				return err
			}
		} else {
			c.log.Warn("controller: GRPCRoute CRD (gateway.networking.k8s.io) not installed; no GRPCRoutes (install manifests/crds and restart)")
		}
		if inf, err := c.referenceGrantInformer(gwFactory); err != nil {
			return err
		} else if inf != nil {
			if err := watch(watched{inf, &l.refGrants, ReferenceGrants.GroupResource()}); err != nil {
				return err
			}
		}
	} else {
		c.log.Warn("controller: gateway.networking.k8s.io/v1 CRDs not installed; no waypoints (install manifests/crds and restart)")
	}

	dynFactory := dynamicinformer.NewFilteredDynamicSharedInformerFactory(c.dyn, 0, metav1.NamespaceAll, nil)
	if ok, err := c.served(AuthorizationPolicies, PeerAuthentications); err != nil {
		return err
	} else if ok {
		for _, p := range []struct {
			gvr    schema.GroupVersionResource
			lister *cache.GenericLister
		}{{AuthorizationPolicies, &l.aps}, {PeerAuthentications, &l.pas}} {
			gi := dynFactory.ForResource(p.gvr)
			if err := gi.Informer().SetTransform(stripObject); err != nil {
				return fmt.Errorf("controller: watch %s: %w", p.gvr.GroupResource(), err)
			}
			if _, err := gi.Informer().AddEventHandler(handler); err != nil {
				return fmt.Errorf("controller: watch %s: %w", p.gvr.GroupResource(), err)
			}
			*p.lister = gi.Lister()
		}
	} else {
		c.log.Warn("controller: security.istio.io/v1 CRDs not installed; serving no policies (install manifests/crds and restart)")
	}
	for _, p := range []struct {
		gvr    schema.GroupVersionResource
		lister *cache.GenericLister
	}{{DestinationRules, &l.drs}, {LocalTrafficPolicies, &l.ltps}} {
		if ok, err := c.served(p.gvr); err != nil {
			return err
		} else if !ok {
			c.log.Warn("controller: CRD not installed; no resilience policy from it (install manifests/crds and restart)", "resource", p.gvr.GroupResource().String())
			continue
		}
		gi := dynFactory.ForResource(p.gvr)
		if err := gi.Informer().SetTransform(stripObject); err != nil {
			return fmt.Errorf("controller: watch %s: %w", p.gvr.GroupResource(), err)
		}
		if _, err := gi.Informer().AddEventHandler(handler); err != nil {
			return fmt.Errorf("controller: watch %s: %w", p.gvr.GroupResource(), err)
		}
		*p.lister = gi.Lister()
	}

	factory.Start(ctx.Done())
	gwFactory.Start(ctx.Done())
	dynFactory.Start(ctx.Done())
	defer factory.Shutdown()
	defer gwFactory.Shutdown()
	defer dynFactory.Shutdown()
	for _, synced := range []map[reflect.Type]bool{factory.WaitForCacheSync(ctx.Done()), gwFactory.WaitForCacheSync(ctx.Done())} {
		for t, ok := range synced {
			if !ok {
				return fmt.Errorf("controller: informer for %v did not sync: %w", t, context.Cause(ctx))
			}
		}
	}
	for gvr, ok := range dynFactory.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("controller: informer for %s did not sync: %w", gvr.GroupResource(), context.Cause(ctx))
		}
	}
	c.log.Info("controller: informers synced")
	if l.gateways != nil {
		c.gateways.Store(&l.gateways)
	}
	return c.loop(ctx, l)
}

// referenceGrantInformer returns the informer of ReferenceGrants: v1, or
// v1beta1 where the CRD predates v1 (Gateway API v1.4 and older). Without
// the CRD it logs that no cross-namespace backendRef will resolve and
// returns nil, as the other Gateway API kinds are handled.
func (c *Controller) referenceGrantInformer(f gwinformers.SharedInformerFactory) (cache.SharedIndexInformer, error) {
	for _, v := range []struct {
		gvr      schema.GroupVersionResource
		informer func() cache.SharedIndexInformer
	}{
		{ReferenceGrants, func() cache.SharedIndexInformer { return f.Gateway().V1().ReferenceGrants().Informer() }},
		{ReferenceGrantsV1beta1, func() cache.SharedIndexInformer { return f.Gateway().V1beta1().ReferenceGrants().Informer() }},
	} {
		ok, err := c.served(v.gvr)
		if err != nil {
			return nil, err
		}
		if ok {
			return v.informer(), nil
		}
	}
	c.log.Warn("controller: ReferenceGrant CRD (gateway.networking.k8s.io) not installed; HTTPRoute backendRefs to other namespaces are refused (install manifests/crds and restart)")
	return nil, nil
}

// loop recomputes after each debounced burst of events.
func (c *Controller) loop(ctx context.Context, l listers) error {
	first := true
	for {
		if err := c.sync(ctx, l); err != nil {
			return err
		}
		if first {
			close(c.synced)
			first = false
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.trigger:
		}
		if !debounce(ctx, c.trigger, c.cfg.Debounce, c.cfg.DebounceMax) {
			return nil
		}
	}
}

// debounce waits until no event arrived for quiet, or max since it was
// called. It returns false if ctx ended.
func debounce(ctx context.Context, trigger <-chan struct{}, quiet, maxWait time.Duration) bool {
	deadline := time.NewTimer(maxWait)
	defer deadline.Stop()
	t := time.NewTimer(quiet)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-deadline.C:
			return true
		case <-t.C:
			return true
		case <-trigger:
			t.Reset(quiet)
		}
	}
}

func poke(ch chan<- struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// sync recomputes everything and updates the cache with the difference.
func (c *Controller) sync(ctx context.Context, l listers) error {
	in := Input{Translate: c.cfg.Translate, RootNamespace: c.cfg.RootNamespace}
	in.Namespaces = listTyped[*corev1.Namespace](l.ns)
	in.Pods = listTyped[*corev1.Pod](l.pods)
	in.Services = listTyped[*corev1.Service](l.svcs)
	in.Nodes = listTyped[*corev1.Node](l.nodes)
	in.EndpointSlices = listTyped[*discoveryv1.EndpointSlice](l.slices)
	in.Gateways = listTyped[*gatewayv1.Gateway](l.gateways)
	in.GatewayClasses = listTyped[*gatewayv1.GatewayClass](l.gatewayClasses)
	in.HTTPRoutes = listTyped[*gatewayv1.HTTPRoute](l.httpRoutes)
	in.GRPCRoutes = listTyped[*gatewayv1.GRPCRoute](l.grpcRoutes)
	in.ReferenceGrants = listReferenceGrants(l.refGrants)
	invalid := map[string]translate.Condition{}
	in.AuthorizationPolicies = decodeAll[translate.AuthorizationPolicy](c.log, l.aps, invalid)
	in.PeerAuthentications = decodeAll[translate.PeerAuthentication](c.log, l.pas, nil)
	in.DestinationRules = decodeAll[translate.DestinationRule](c.log, l.drs, nil)
	in.LocalTrafficPolicies = decodeAll[translate.LocalTrafficPolicy](c.log, l.ltps, nil)
	out := Compute(in)

	addrs := make(map[string]proto.Message, len(out.Addresses))
	for k, v := range out.Addresses {
		addrs[k] = v
	}
	authz := make(map[string]proto.Message, len(out.Authorizations))
	for k, v := range out.Authorizations {
		authz[k] = v
	}
	// Policies first so that a workload never names a policy ztunnel lacks
	// for longer than necessary; removals of policies after addresses.
	if err := c.update(xds.TypeAuthorization, authz, &c.prevAuthz); err != nil {
		return err
	}
	if err := c.update(xds.TypeAddress, addrs, &c.prevAddrs); err != nil {
		return err
	}
	routes := make(map[string]proto.Message, len(out.Routes))
	for k, v := range out.Routes {
		routes[k] = v
	}
	if err := c.update(xds.TypeServiceRoutes, routes, &c.prevRoutes); err != nil {
		return err
	}
	wpPols := make(map[string]proto.Message, len(out.WaypointPolicies))
	for k, v := range out.WaypointPolicies {
		wpPols[k] = v
	}
	if err := c.update(xds.TypeWaypointPolicy, wpPols, &c.prevWPPols); err != nil {
		return err
	}
	res := make(map[string]proto.Message, len(out.Resilience))
	for k, v := range out.Resilience {
		res[k] = v
	}
	if err := c.update(xds.TypeServiceResilience, res, &c.prevRes); err != nil {
		return err
	}
	for kind, status := range map[string]map[string][]translate.Condition{
		"DestinationRule": out.DestinationRuleStatus, "LocalTrafficPolicy": out.LocalTrafficPolicyStatus,
	} {
		for k, conds := range status {
			for _, cond := range conds {
				if cond.Status != metav1.ConditionTrue {
					c.log.Debug("controller: resilience policy not applied", "kind", kind, "policy", k, "reason", cond.Reason, "message", cond.Message)
				}
			}
		}
	}
	c.warnInvalid(out.InvalidTunnelTransports)
	c.log.Debug("controller: synced", "addresses", len(addrs), "authorizations", len(authz), "routes", len(routes))

	writeStatus := c.writesStatus()
	if writeStatus {
		c.writeRouteStatus(ctx, in.HTTPRoutes, in.GRPCRoutes, out.RouteStatus)
	}
	if writeStatus && l.aps != nil {
		for k, cond := range invalid {
			out.Conditions[k] = []translate.Condition{cond}
		}
		c.writeStatus(ctx, AuthorizationPolicies, l.aps, out.Conditions)
	}
	if writeStatus {
		for _, r := range []struct {
			gvr    schema.GroupVersionResource
			l      cache.GenericLister
			status map[string][]translate.Condition
		}{{DestinationRules, l.drs, out.DestinationRuleStatus}, {LocalTrafficPolicies, l.ltps, out.LocalTrafficPolicyStatus}} {
			if r.l != nil {
				c.writeStatus(ctx, r.gvr, r.l, r.status)
			}
		}
	}
	return nil
}

// warnInvalid logs each invalid annotation once, when it appears or its
// problem changes.
func (c *Controller) warnInvalid(invalid map[string]string) {
	for obj, msg := range invalid {
		if c.warned[obj] != msg {
			c.log.Warn("controller: ignoring invalid annotation", "object", obj, "err", msg)
		}
	}
	c.warned = invalid
}

// update hands the cache what changed between *prev (the encodings of the
// last set handed over, see [Diff]) and next.
func (c *Controller) update(typeURL string, next map[string]proto.Message, prev *map[string][]byte) error {
	upserts, removals, encoded, err := Diff(*prev, next)
	if err != nil {
		return err
	}
	if len(upserts) == 0 && len(removals) == 0 {
		*prev = encoded
		return nil
	}
	if err := c.cfg.Cache.Update(typeURL, upserts, removals); err != nil {
		return fmt.Errorf("controller: update cache: %w", err)
	}
	*prev = encoded
	return nil
}

func listTyped[T any](l cache.GenericLister) []T {
	if l == nil {
		return nil
	}
	objs, err := l.List(labels.Everything())
	if err != nil { // an indexer List never fails
		return nil
	}
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		if t, ok := o.(T); ok {
			out = append(out, t)
		}
	}
	return out
}

// listReferenceGrants lists the ReferenceGrants of l as v1 objects: the
// v1beta1 type is the same struct.
func listReferenceGrants(l cache.GenericLister) []*gatewayv1.ReferenceGrant {
	if l == nil {
		return nil
	}
	objs, _ := l.List(labels.Everything())
	out := make([]*gatewayv1.ReferenceGrant, 0, len(objs))
	for _, o := range objs {
		switch g := o.(type) {
		case *gatewayv1.ReferenceGrant:
			out = append(out, g)
		case *gatewayv1beta1.ReferenceGrant:
			out = append(out, (*gatewayv1.ReferenceGrant)(g))
		}
	}
	return out
}

// decodeAll decodes every object of l; an object that does not decode is
// logged, left out, and (if invalid is not nil) given an InvalidValue
// condition.
func decodeAll[T translate.Policy](log *slog.Logger, l cache.GenericLister, invalid map[string]translate.Condition) []T {
	if l == nil {
		return nil
	}
	objs, _ := l.List(labels.Everything())
	out := make([]T, 0, len(objs))
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		p, err := translate.FromUnstructured[T](u.Object)
		if err != nil {
			log.Warn("controller: ignoring invalid policy", "namespace", u.GetNamespace(), "name", u.GetName(), "kind", u.GetKind(), "err", err)
			if invalid != nil {
				invalid[u.GetNamespace()+"/"+u.GetName()] = translate.Condition{
					Type: translate.ConditionZtunnelAccepted, Status: metav1.ConditionFalse,
					Reason: translate.ReasonInvalidValue, Message: err.Error(),
				}
			}
			continue
		}
		out = append(out, *p)
	}
	return out
}

// served reports whether the apiserver serves all of gvrs, which must
// share one group version (a CRD that is not installed is not served).
func (c *Controller) served(gvrs ...schema.GroupVersionResource) (bool, error) {
	gv := gvrs[0].GroupVersion()
	rl, err := c.kube.Discovery().ServerResourcesForGroupVersion(gv.String())
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("controller: discover %s: %w", gv, err)
	}
	have := map[string]bool{}
	for _, r := range rl.APIResources {
		have[r.Name] = true
	}
	for _, r := range gvrs {
		if !have[r.Resource] {
			return false, nil
		}
	}
	return true, nil
}

// writeStatus patches status.conditions of each object of resource gvr
// (AuthorizationPolicies, DestinationRules, LocalTrafficPolicies) whose
// conditions differ from what it has. Failures are logged: the next event
// retries.
func (c *Controller) writeStatus(ctx context.Context, gvr schema.GroupVersionResource, l cache.GenericLister, conds map[string][]translate.Condition) {
	objs, _ := l.List(labels.Everything())
	now := metav1.Now().UTC().Format(time.RFC3339)
	for _, o := range objs {
		u, ok := o.(*unstructured.Unstructured)
		if !ok {
			continue
		}
		want, ok := conds[u.GetNamespace()+"/"+u.GetName()]
		if !ok {
			continue
		}
		have, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		next, changed := mergeConditions(have, want, u.GetGeneration(), now)
		if !changed {
			continue
		}
		patch, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": next}})
		if err != nil {
			continue
		}
		_, err = c.dyn.Resource(gvr).Namespace(u.GetNamespace()).
			Patch(ctx, u.GetName(), types.MergePatchType, patch, metav1.PatchOptions{FieldManager: "istiod-lite"}, "status")
		if err != nil && !apierrors.IsNotFound(err) {
			c.log.Warn("controller: write status", "resource", gvr.Resource, "namespace", u.GetNamespace(), "name", u.GetName(), "err", err)
		}
	}
}

// mergeConditions returns have with the conditions of want set (keeping
// lastTransitionTime when the status did not change) and whether anything
// changed.
func mergeConditions(have []any, want []translate.Condition, generation int64, now string) ([]any, bool) {
	byType := map[string]map[string]any{}
	var order []string
	for _, h := range have {
		m, ok := h.(map[string]any)
		if !ok {
			continue
		}
		t, _ := m["type"].(string)
		byType[t] = maps.Clone(m)
		order = append(order, t)
	}
	changed := false
	for _, w := range want {
		old := byType[w.Type]
		m := map[string]any{
			"type": w.Type, "status": string(w.Status), "reason": w.Reason, "message": w.Message,
			"observedGeneration": generation, "lastTransitionTime": now,
		}
		if old != nil {
			if old["status"] == m["status"] {
				m["lastTransitionTime"] = old["lastTransitionTime"]
			}
			if old["status"] == m["status"] && old["reason"] == m["reason"] && old["message"] == m["message"] &&
				fmt.Sprint(old["observedGeneration"]) == fmt.Sprint(generation) {
				continue
			}
		} else {
			order = append(order, w.Type)
		}
		byType[w.Type] = m
		changed = true
	}
	out := make([]any, 0, len(order))
	for _, t := range order {
		out = append(out, byType[t])
	}
	return out, changed
}
