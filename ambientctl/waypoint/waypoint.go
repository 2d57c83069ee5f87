// Package waypoint manages waypoints the way istioctl waypoint does: a
// waypoint is a Gateway API Gateway of class istio-waypoint with one HBONE
// listener on 15008, which istiod-lite's waypoint controller turns into a
// Deployment and Service; the label istio.io/use-waypoint on a namespace
// (or service, or pod) sends its traffic there.
//
// Generate builds the Gateway (pure); Apply creates or updates it with
// server-side apply, optionally labels the namespace and waits until the
// Gateway is Programmed; Delete, List and Get read and remove them.
package waypoint

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gwclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/ambientmesh/ambient/ambientctl/kube"
)

// Istio's names for waypoints.
const (
	ClassName        = "istio-waypoint"
	DefaultName      = "waypoint"
	ForLabel         = "istio.io/waypoint-for"
	UseWaypointLabel = "istio.io/use-waypoint"
	ListenerName     = "mesh"
	HBONEPort        = 15008
	HBONEProtocol    = "HBONE"
	fieldManager     = "ambientctl"
)

// The traffic a waypoint takes (istio.io/waypoint-for).
var ForValues = []string{"service", "workload", "all", "none"}

// Options describe a waypoint.
type Options struct {
	Namespace string
	Name      string // default DefaultName
	For       string // default "service"
}

func (o Options) withDefaults() (Options, error) {
	if o.Namespace == "" {
		return o, errors.New("name the waypoint's namespace with -n NAMESPACE")
	}
	if o.Name == "" {
		o.Name = DefaultName
	}
	if o.For == "" {
		o.For = "service"
	}
	if !slices.Contains(ForValues, o.For) {
		return o, fmt.Errorf("--for %q: want one of %s", o.For, strings.Join(ForValues, ", "))
	}
	return o, nil
}

// Generate returns the Gateway for o.
func Generate(o Options) (*gatewayv1.Gateway, error) {
	o, err := o.withDefaults()
	if err != nil {
		return nil, err
	}
	return &gatewayv1.Gateway{
		TypeMeta: metav1.TypeMeta{APIVersion: gatewayv1.GroupVersion.String(), Kind: "Gateway"},
		ObjectMeta: metav1.ObjectMeta{
			Name: o.Name, Namespace: o.Namespace,
			Labels: map[string]string{ForLabel: o.For},
		},
		Spec: gatewayv1.GatewaySpec{
			GatewayClassName: ClassName,
			Listeners: []gatewayv1.Listener{{
				Name: ListenerName, Port: HBONEPort, Protocol: HBONEProtocol,
			}},
		},
	}, nil
}

// Client reaches the Gateway API.
type Client struct {
	c  *kube.Cluster
	gw gwclient.Interface
}

// NewClient builds a Gateway API client for c.
func NewClient(c *kube.Cluster) (*Client, error) {
	gw, err := gwclient.NewForConfig(c.Config)
	if err != nil {
		return nil, fmt.Errorf("gateway API client: %w", err)
	}
	return &Client{c: c, gw: gw}, nil
}

// explain adds what to do to the errors users meet here.
func (cl *Client) explain(err error, what, ns string) error {
	switch {
	case err == nil:
		return nil
	case apierrors.IsNotFound(err) && strings.Contains(err.Error(), "the server could not find the requested resource"):
		return fmt.Errorf("%s: the Gateway API CRDs are not installed; install the mesh first: kubectl apply -k manifests/", what)
	case apierrors.IsNotFound(err) && ns != "" && strings.Contains(err.Error(), "namespaces \""+ns+"\" not found"):
		return kube.NamespaceNotFound(ns)
	}
	return cl.c.Explain(err, what)
}

// Apply creates or updates the waypoint (server-side apply: fields other
// managers own are left alone).
func (cl *Client) Apply(ctx context.Context, gw *gatewayv1.Gateway) error {
	body, err := json.Marshal(gw)
	if err != nil {
		return err
	}
	force := true
	_, err = cl.gw.GatewayV1().Gateways(gw.Namespace).Patch(ctx, gw.Name, types.ApplyPatchType, body,
		metav1.PatchOptions{FieldManager: fieldManager, Force: &force})
	return cl.explain(err, "applying gateway "+gw.Namespace+"/"+gw.Name, gw.Namespace)
}

// Enroll labels namespace ns istio.io/use-waypoint=name (nil name removes
// the label). It reports whether the label changed.
func (cl *Client) Enroll(ctx context.Context, ns string, name *string) (bool, error) {
	cur, err := cl.c.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return false, kube.NamespaceNotFound(ns)
	}
	if err != nil {
		return false, cl.c.Explain(err, "reading namespace "+ns)
	}
	old, had := cur.Labels[UseWaypointLabel]
	if (name == nil && !had) || (name != nil && had && old == *name) {
		return false, nil
	}
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"labels": map[string]*string{UseWaypointLabel: name}}})
	if _, err := cl.c.Client.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return false, cl.c.Explain(err, "labelling namespace "+ns)
	}
	return true, nil
}

// ErrNotProgrammed: the wait ended before the Gateway was Programmed.
var ErrNotProgrammed = errors.New("waypoint not programmed")

// Wait polls the Gateway until its Programmed condition is True for its
// current generation, or ctx ends (then the last condition is reported).
func (cl *Client) Wait(ctx context.Context, ns, name string, every time.Duration) error {
	last := "no status yet"
	for {
		gw, err := cl.gw.GatewayV1().Gateways(ns).Get(ctx, name, metav1.GetOptions{})
		switch {
		case err == nil:
			c := meta.FindStatusCondition(gw.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed))
			if c != nil && c.Status == metav1.ConditionTrue && c.ObservedGeneration >= gw.Generation {
				return nil
			}
			if c != nil {
				last = fmt.Sprintf("Programmed=%s (%s: %s)", c.Status, c.Reason, c.Message)
			}
		case ctx.Err() == nil && !apierrors.IsNotFound(err):
			return cl.explain(err, "reading gateway "+ns+"/"+name, ns)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w: gateway %s/%s: %s; is istiod-lite running? (kubectl get pods -n istio-system)", ErrNotProgrammed, ns, name, last)
		case <-time.After(every):
		}
	}
}

// Delete removes the named waypoints of ns; a name that does not exist is
// an error naming it.
func (cl *Client) Delete(ctx context.Context, ns string, names []string) error {
	for _, n := range names {
		err := cl.gw.GatewayV1().Gateways(ns).Delete(ctx, n, metav1.DeleteOptions{})
		if apierrors.IsNotFound(err) && !strings.Contains(err.Error(), "the server could not find the requested resource") {
			return fmt.Errorf("waypoint %s/%s not found (list them with: ambientctl waypoint list -n %s)", ns, n, ns)
		}
		if err != nil {
			return cl.explain(err, "deleting gateway "+ns+"/"+n, ns)
		}
	}
	return nil
}

// Waypoint is one waypoint as List and Get report it.
type Waypoint struct {
	Namespace  string             `json:"namespace"`
	Name       string             `json:"name"`
	For        string             `json:"for"`
	Programmed string             `json:"programmed"`
	Address    string             `json:"address,omitempty"`
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// List returns the waypoints (Gateways of class istio-waypoint) of ns, or
// of every namespace when ns is "".
func (cl *Client) List(ctx context.Context, ns string) ([]Waypoint, error) {
	list, err := cl.gw.GatewayV1().Gateways(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, cl.explain(err, "listing gateways", "")
	}
	var out []Waypoint
	for i := range list.Items {
		if list.Items[i].Spec.GatewayClassName == ClassName {
			out = append(out, view(&list.Items[i]))
		}
	}
	slices.SortFunc(out, func(a, b Waypoint) int {
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
	return out, nil
}

// Get returns one waypoint.
func (cl *Client) Get(ctx context.Context, ns, name string) (Waypoint, error) {
	gw, err := cl.gw.GatewayV1().Gateways(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && !strings.Contains(err.Error(), "the server could not find the requested resource") {
		return Waypoint{}, fmt.Errorf("waypoint %s/%s not found; create it with: ambientctl waypoint apply -n %s --name %s", ns, name, ns, name)
	}
	if err != nil {
		return Waypoint{}, cl.explain(err, "reading gateway "+ns+"/"+name, ns)
	}
	return view(gw), nil
}

func view(gw *gatewayv1.Gateway) Waypoint {
	w := Waypoint{Namespace: gw.Namespace, Name: gw.Name, For: gw.Labels[ForLabel], Programmed: "Unknown", Conditions: gw.Status.Conditions}
	if w.For == "" {
		w.For = "service"
	}
	if c := meta.FindStatusCondition(gw.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed)); c != nil {
		w.Programmed = string(c.Status)
	}
	var addrs []string
	for _, a := range gw.Status.Addresses {
		addrs = append(addrs, a.Value)
	}
	w.Address = strings.Join(addrs, ",")
	return w
}
