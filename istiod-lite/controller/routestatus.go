package controller

import (
	"context"
	"encoding/json"
	"reflect"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambientmesh/ambient/istiod-lite/translate"
)

// mergeRouteParents returns the route's status parents with ours (those
// of controller translate.ControllerName) replaced by want, keeping the
// entries of other controllers and each condition's lastTransitionTime
// while its status is unchanged, and whether anything changed.
func mergeRouteParents(have, want []gatewayv1.RouteParentStatus, now metav1.Time) ([]gatewayv1.RouteParentStatus, bool) {
	var next []gatewayv1.RouteParentStatus
	ours := map[string]gatewayv1.RouteParentStatus{}
	for _, h := range have {
		if h.ControllerName != translate.ControllerName {
			next = append(next, h)
			continue
		}
		ours[parentKey(h.ParentRef)] = h
	}
	for _, w := range want {
		old := ours[parentKey(w.ParentRef)]
		conds := make([]metav1.Condition, 0, len(w.Conditions))
		for _, c := range w.Conditions {
			c.LastTransitionTime = now
			if prev := meta.FindStatusCondition(old.Conditions, c.Type); prev != nil && prev.Status == c.Status {
				c.LastTransitionTime = prev.LastTransitionTime
			}
			conds = append(conds, c)
		}
		w.Conditions = conds
		next = append(next, w)
	}
	return next, !reflect.DeepEqual(normalize(have), normalize(next))
}

func normalize(p []gatewayv1.RouteParentStatus) []gatewayv1.RouteParentStatus {
	if len(p) == 0 {
		return nil
	}
	return p
}

func parentKey(r gatewayv1.ParentReference) string {
	b, _ := json.Marshal(r)
	return string(b)
}

// writeRouteStatus patches the status of each HTTPRoute and GRPCRoute
// whose parents' status differs from what it has. Failures are logged: the
// next event retries.
func (c *Controller) writeRouteStatus(ctx context.Context, https []*gatewayv1.HTTPRoute, grpcs []*gatewayv1.GRPCRoute, statuses []translate.RouteStatus) {
	type key struct {
		kind string
		types.NamespacedName
	}
	want := make(map[key][]gatewayv1.RouteParentStatus, len(statuses))
	for _, s := range statuses {
		want[key{s.Kind, s.Route}] = s.Parents
	}
	now := metav1.Now()
	write := func(kind string, m metav1.ObjectMeta, have []gatewayv1.RouteParentStatus,
		patch func(ctx context.Context, ns, name string, data []byte) error) {
		parents, ok := want[key{kind, types.NamespacedName{Namespace: m.Namespace, Name: m.Name}}]
		if !ok {
			return
		}
		next, changed := mergeRouteParents(have, parents, now)
		if !changed {
			return
		}
		data, err := json.Marshal(map[string]any{"status": map[string]any{"parents": next}})
		if err != nil {
			return
		}
		if err := patch(ctx, m.Namespace, m.Name, data); err != nil && !apierrors.IsNotFound(err) {
			c.log.Warn("controller: write route status", "kind", kind, "namespace", m.Namespace, "name", m.Name, "err", err)
		}
	}
	opts := metav1.PatchOptions{FieldManager: "istiod-lite"}
	for _, r := range https {
		write("HTTPRoute", r.ObjectMeta, r.Status.Parents, func(ctx context.Context, ns, name string, data []byte) error {
			_, err := c.gw.GatewayV1().HTTPRoutes(ns).Patch(ctx, name, types.MergePatchType, data, opts, "status")
			return err
		})
	}
	for _, r := range grpcs {
		write("GRPCRoute", r.ObjectMeta, r.Status.Parents, func(ctx context.Context, ns, name string, data []byte) error {
			_, err := c.gw.GatewayV1().GRPCRoutes(ns).Patch(ctx, name, types.MergePatchType, data, opts, "status")
			return err
		})
	}
}
