package waypointctl

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

var testTemplate = Template{
	XDSAddress:    "istiod.istio-system.svc:15012",
	XDSServerName: "istiod.istio-system.svc",
	TrustDomain:   "cluster.local",
	ClusterID:     "Kubernetes",
}

func gateway(name string, listeners ...gatewayv1.Listener) *gatewayv1.Gateway {
	return &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: "uid-1", Generation: 3},
		Spec:       gatewayv1.GatewaySpec{GatewayClassName: GatewayClass, Listeners: listeners},
	}
}

var meshListener = gatewayv1.Listener{Name: "mesh", Port: 15008, Protocol: "HBONE"}

// typed converts an apply configuration to the object it describes.
func typed[T any](t *testing.T, ac any) *T {
	t.Helper()
	b, err := json.Marshal(ac)
	if err != nil {
		t.Fatal(err)
	}
	var out T
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

func TestCheck_RequiresHBONEListenerAndServiceName(t *testing.T) {
	for _, tc := range []struct {
		name string
		gw   *gatewayv1.Gateway
		want error
	}{
		{"hbone listener", gateway("waypoint", meshListener), nil},
		{"hbone among others", gateway("waypoint", gatewayv1.Listener{Name: "http", Port: 80, Protocol: "HTTP"}, meshListener), nil},
		{"no listeners", gateway("waypoint"), ErrNoHBONEListener},
		{"HTTP on 15008", gateway("waypoint", gatewayv1.Listener{Name: "mesh", Port: 15008, Protocol: "HTTP"}), ErrNoHBONEListener},
		{"HBONE on another port", gateway("waypoint", gatewayv1.Listener{Name: "mesh", Port: 15009, Protocol: "HBONE"}), ErrNoHBONEListener},
		{"name starting with a digit", gateway("1waypoint", meshListener), ErrInvalidName},
		{"name with a dot", gateway("way.point", meshListener), ErrInvalidName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := Check(tc.gw)
			if !errors.Is(err, tc.want) || (tc.want == nil) != (err == nil) {
				t.Errorf("Check = %v, want %v", err, tc.want)
			}
		})
	}
}

func TestDesired_ObjectsNamedOwnedAndLabelled(t *testing.T) {
	sac, dac, svcac := Desired(gateway("waypoint", meshListener), testTemplate)
	sa, d, svc := typed[corev1.ServiceAccount](t, sac), typed[appsv1.Deployment](t, dac), typed[corev1.Service](t, svcac)

	wantOwner := []metav1.OwnerReference{{
		APIVersion: "gateway.networking.k8s.io/v1", Kind: "Gateway", Name: "waypoint", UID: "uid-1",
		Controller: new(true), BlockOwnerDeletion: new(true),
	}}
	wantLabels := map[string]string{LabelGatewayName: "waypoint", LabelManaged: ManagedValue}
	for _, m := range []metav1.ObjectMeta{sa.ObjectMeta, d.ObjectMeta, svc.ObjectMeta} {
		if m.Name != "waypoint" || m.Namespace != "shop" {
			t.Errorf("object %s/%s, want shop/waypoint", m.Namespace, m.Name)
		}
		if diff := cmp.Diff(wantOwner, m.OwnerReferences); diff != "" {
			t.Errorf("%s owner references (-want +got):\n%s", m.Name, diff)
		}
		if diff := cmp.Diff(wantLabels, m.Labels); diff != "" {
			t.Errorf("labels (-want +got):\n%s", diff)
		}
	}
	if sa.Kind != "ServiceAccount" || d.Kind != "Deployment" || d.APIVersion != "apps/v1" || svc.Kind != "Service" {
		t.Errorf("kinds %s %s/%s %s", sa.Kind, d.APIVersion, d.Kind, svc.Kind)
	}
}

func TestDesired_DeploymentRunsWaypointUnderItsIdentity(t *testing.T) {
	_, dac, _ := Desired(gateway("waypoint", meshListener), testTemplate)
	d := typed[appsv1.Deployment](t, dac)

	if d.Spec.Replicas != nil {
		t.Errorf("replicas = %d, want unset (defaults to 1, left to users and autoscalers)", *d.Spec.Replicas)
	}
	if diff := cmp.Diff(map[string]string{LabelGatewayName: "waypoint"}, d.Spec.Selector.MatchLabels); diff != "" {
		t.Errorf("selector (-want +got):\n%s", diff)
	}
	pod := d.Spec.Template
	for k, v := range map[string]string{LabelGatewayName: "waypoint", LabelManaged: ManagedValue, LabelDataplaneMode: "none"} {
		if pod.Labels[k] != v {
			t.Errorf("pod label %s = %q, want %q", k, pod.Labels[k], v)
		}
	}
	spec := pod.Spec
	if spec.ServiceAccountName != "waypoint" {
		t.Errorf("serviceAccountName = %q", spec.ServiceAccountName)
	}
	if spec.AutomountServiceAccountToken == nil || *spec.AutomountServiceAccountToken {
		t.Error("the API token is automounted; the waypoint never calls the API")
	}
	if sc := spec.SecurityContext; sc == nil || sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot {
		t.Errorf("pod security context %+v: want runAsNonRoot", sc)
	}
	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	if c.Image != DefaultImage {
		t.Errorf("image = %q, want %q", c.Image, DefaultImage)
	}
	wantArgs := []string{
		"--xds-address=istiod.istio-system.svc:15012",
		"--xds-server-name=istiod.istio-system.svc",
		"--ca-root-file=/var/run/secrets/istio/root-cert.pem",
		"--token-file=/var/run/secrets/tokens/istio-token",
		"--trust-domain=cluster.local",
		"--cluster-id=Kubernetes",
	}
	if diff := cmp.Diff(wantArgs, c.Args); diff != "" {
		t.Errorf("args (-want +got):\n%s", diff)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil && e.ValueFrom.FieldRef != nil {
			env[e.Name] = e.ValueFrom.FieldRef.FieldPath
		}
	}
	wantEnv := map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace",
		"NODE_NAME": "spec.nodeName", "SERVICE_ACCOUNT": "spec.serviceAccountName"}
	if diff := cmp.Diff(wantEnv, env); diff != "" {
		t.Errorf("downward API env (-want +got):\n%s", diff)
	}
	ports := map[string]string{}
	for _, p := range c.Ports {
		ports[p.Name] = fmt.Sprintf("%d/%s", p.ContainerPort, p.Protocol)
	}
	if diff := cmp.Diff(map[string]string{"hbone": "15008/TCP", "hbone3": "15008/UDP",
		"http-monitoring": "15020/TCP", "http-health": "15021/TCP"}, ports); diff != "" {
		t.Errorf("ports (-want +got):\n%s", diff)
	}
	if p := c.ReadinessProbe; p == nil || p.HTTPGet == nil || p.HTTPGet.Path != "/healthz/ready" || p.HTTPGet.Port != intstr.FromInt32(15021) {
		t.Errorf("readiness probe %+v, want GET :15021/healthz/ready", p)
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem ||
		sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.Capabilities == nil || !cmp.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) || len(sc.Capabilities.Add) > 0 {
		t.Errorf("container security context %+v: want read-only root, no escalation, no capabilities", sc)
	}

	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m.MountPath
	}
	var tokenAudience, rootCM string
	for _, v := range spec.Volumes {
		switch {
		case v.Projected != nil && len(v.Projected.Sources) == 1 && v.Projected.Sources[0].ServiceAccountToken != nil:
			tok := v.Projected.Sources[0].ServiceAccountToken
			if mounts[v.Name]+"/"+tok.Path == "/var/run/secrets/tokens/istio-token" {
				tokenAudience = tok.Audience
			}
		case v.ConfigMap != nil && mounts[v.Name] == "/var/run/secrets/istio":
			rootCM = v.ConfigMap.Name
		}
	}
	if tokenAudience != "istio-ca" {
		t.Errorf("token at --token-file has audience %q, want istio-ca", tokenAudience)
	}
	if rootCM != "istio-ca-root-cert" {
		t.Errorf("--ca-root-file's directory mounts ConfigMap %q, want istio-ca-root-cert", rootCM)
	}
}

func TestDesired_ServiceSelectsPodsOnMeshPort(t *testing.T) {
	_, dac, svcac := Desired(gateway("waypoint", meshListener), testTemplate)
	d, svc := typed[appsv1.Deployment](t, dac), typed[corev1.Service](t, svcac)
	want := corev1.ServiceSpec{
		Type:     corev1.ServiceTypeClusterIP,
		Selector: map[string]string{LabelGatewayName: "waypoint"},
		Ports: []corev1.ServicePort{{
			Name: "mesh", AppProtocol: new("all"), Protocol: corev1.ProtocolTCP, Port: 15008, TargetPort: intstr.FromInt32(15008),
		}},
	}
	if diff := cmp.Diff(want, svc.Spec); diff != "" {
		t.Errorf("service spec (-want +got):\n%s", diff)
	}
	for k, v := range svc.Spec.Selector {
		if d.Spec.Template.Labels[k] != v {
			t.Errorf("service selector %s=%s does not select the pods (%v)", k, v, d.Spec.Template.Labels)
		}
	}
}

func TestDesired_TemplateAndInfrastructure(t *testing.T) {
	for _, tc := range []struct {
		name          string
		tmpl          Template
		infra         *gatewayv1.GatewayInfrastructure
		wantImage     string
		wantArg       string
		wantLabels    map[string]string
		wantPodAnnots map[string]string
	}{{
		name: "image and trust domain from the template",
		tmpl: Template{Image: "registry.example/waypoint:v2", XDSAddress: "istiod.mesh.svc:15012", XDSServerName: "istiod.mesh.svc",
			TrustDomain: "example.org", ClusterID: "c1"},
		wantImage:  "registry.example/waypoint:v2",
		wantArg:    "--trust-domain=example.org",
		wantLabels: map[string]string{LabelGatewayName: "waypoint", LabelManaged: ManagedValue},
	}, {
		name: "infrastructure labels and annotations copied, ours win",
		tmpl: testTemplate,
		infra: &gatewayv1.GatewayInfrastructure{
			Labels:      map[gatewayv1.LabelKey]gatewayv1.LabelValue{"team": "shop", LabelManaged: "someone-else"},
			Annotations: map[gatewayv1.AnnotationKey]gatewayv1.AnnotationValue{"cost-center": "42"},
		},
		wantImage:     DefaultImage,
		wantArg:       "--xds-address=istiod.istio-system.svc:15012",
		wantLabels:    map[string]string{LabelGatewayName: "waypoint", LabelManaged: ManagedValue, "team": "shop"},
		wantPodAnnots: map[string]string{"cost-center": "42"},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			gw := gateway("waypoint", meshListener)
			gw.Spec.Infrastructure = tc.infra
			sac, dac, svcac := Desired(gw, tc.tmpl)
			sa, d, svc := typed[corev1.ServiceAccount](t, sac), typed[appsv1.Deployment](t, dac), typed[corev1.Service](t, svcac)
			c := d.Spec.Template.Spec.Containers[0]
			if c.Image != tc.wantImage {
				t.Errorf("image = %q, want %q", c.Image, tc.wantImage)
			}
			found := false
			for _, a := range c.Args {
				found = found || a == tc.wantArg
			}
			if !found {
				t.Errorf("args %v lack %s", c.Args, tc.wantArg)
			}
			for _, m := range []metav1.ObjectMeta{sa.ObjectMeta, d.ObjectMeta, svc.ObjectMeta} {
				if diff := cmp.Diff(tc.wantLabels, m.Labels); diff != "" {
					t.Errorf("labels (-want +got):\n%s", diff)
				}
			}
			for k, v := range tc.wantPodAnnots {
				if d.Spec.Template.Annotations[k] != v || svc.Annotations[k] != v {
					t.Errorf("annotation %s not copied: pod %v, service %v", k, d.Spec.Template.Annotations, svc.Annotations)
				}
			}
			if d.Spec.Template.Labels[LabelDataplaneMode] != "none" {
				t.Errorf("pod labels %v lack %s=none", d.Spec.Template.Labels, LabelDataplaneMode)
			}
		})
	}
}
