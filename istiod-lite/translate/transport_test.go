package translate

import (
	"maps"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/ambientmesh/ambient/proto/workloadapi"
)

func annotated(value string) map[string]string {
	if value == "" {
		return nil
	}
	return map[string]string{AnnotationTunnelTransport: value}
}

// TestTunnelTransport_Precedence: the pod's annotation, else the
// namespace's, else the mesh-wide default; an invalid value at the level
// that decides gives h2 and an error naming the object.
func TestTunnelTransport_Precedence(t *testing.T) {
	const h2, quic = workloadapi.TunnelTransport_H2, workloadapi.TunnelTransport_QUIC
	for _, tc := range []struct {
		name         string
		pod, ns      string // annotation values; "" for none
		noNamespace  bool
		def          workloadapi.TunnelTransport
		want         workloadapi.TunnelTransport
		wantErrAbout string // object the error names; "" for no error
	}{
		{name: "nothing: the default h2", want: h2},
		{name: "nothing: the default quic", def: quic, want: quic},
		{name: "namespace quic", ns: "quic", want: quic},
		{name: "namespace h2 beats default quic", ns: "h2", def: quic, want: h2},
		{name: "pod quic beats namespace h2", pod: "quic", ns: "h2", want: quic},
		{name: "pod h2 beats namespace quic", pod: "h2", ns: "quic", def: quic, want: h2},
		{name: "pod quic, namespace unknown", pod: "quic", noNamespace: true, want: quic},
		{name: "invalid pod value is h2, not the namespace's quic", pod: "QUIC", ns: "quic", def: quic, want: h2, wantErrAbout: "pod shop/web"},
		{name: "invalid namespace value is h2, not the default quic", ns: "http3", def: quic, want: h2, wantErrAbout: "namespace shop"},
		{name: "empty value is invalid", pod: " ", def: quic, want: h2, wantErrAbout: "pod shop/web"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "shop", Annotations: annotated(tc.pod)}}
			var ns *corev1.Namespace
			if !tc.noNamespace {
				ns = &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Annotations: annotated(tc.ns)}}
			}
			got, err := TunnelTransport(pod, ns, tc.def)
			if got != tc.want {
				t.Errorf("transport = %v, want %v", got, tc.want)
			}
			switch {
			case tc.wantErrAbout == "" && err != nil:
				t.Errorf("unexpected error: %v", err)
			case tc.wantErrAbout != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErrAbout) || !strings.Contains(err.Error(), AnnotationTunnelTransport)):
				t.Errorf("error = %v, want one naming %s and the annotation", err, tc.wantErrAbout)
			}
		})
	}
}

// TestWorkload_TunnelTransport: the field is set on captured pods and on
// a waypoint's (which serves HBONE over both transports, though never
// captured), from the annotations and Config.DefaultTunnelTransport; H2
// is the zero value, so an h2 pod's workload is the same as before the
// field existed.
func TestWorkload_TunnelTransport(t *testing.T) {
	quicNS := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default",
		Labels: map[string]string{LabelDataplaneMode: "ambient"}, Annotations: annotated("quic")}}
	plainNS := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "default", Annotations: annotated("quic")}}
	for _, tc := range []struct {
		name    string
		ns      *corev1.Namespace
		pod     func(*corev1.Pod)
		def     workloadapi.TunnelTransport
		gws     []*gatewayv1.Gateway
		want    workloadapi.TunnelTransport
		wantHBO bool
	}{
		{name: "captured, namespace quic", ns: quicNS, want: workloadapi.TunnelTransport_QUIC, wantHBO: true},
		{name: "captured, pod h2 overrides", ns: quicNS, pod: func(p *corev1.Pod) { p.Annotations = annotated("h2") }, wantHBO: true},
		{name: "captured, mesh default quic", ns: namespace(map[string]string{LabelDataplaneMode: "ambient"}),
			def: workloadapi.TunnelTransport_QUIC, want: workloadapi.TunnelTransport_QUIC, wantHBO: true},
		{name: "not captured: no transport", ns: plainNS, def: workloadapi.TunnelTransport_QUIC},
		{name: "waypoint pod, namespace quic", ns: quicNS, gws: []*gatewayv1.Gateway{waypointGW("default", "wp", "")},
			pod: func(p *corev1.Pod) { p.Labels[LabelGatewayName] = "wp" }, want: workloadapi.TunnelTransport_QUIC, wantHBO: true},
		{name: "waypoint pod out of capture, namespace quic", ns: quicNS, gws: []*gatewayv1.Gateway{waypointGW("default", "wp", "")},
			pod: func(p *corev1.Pod) {
				p.Labels[LabelGatewayName], p.Labels[LabelDataplaneMode] = "wp", DataplaneModeNone
			}, want: workloadapi.TunnelTransport_QUIC},
		{name: "pod out of capture, not a waypoint: no transport", ns: quicNS,
			pod: func(p *corev1.Pod) { p.Labels[LabelDataplaneMode] = DataplaneModeNone }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			idx := NewIndex(Cluster{Namespaces: []*corev1.Namespace{tc.ns}, Gateways: tc.gws,
				Config: Config{DefaultTunnelTransport: tc.def}})
			w := Workload(testPod(tc.pod), idx)
			if got := w.GetTunnelProtocol() == workloadapi.TunnelProtocol_HBONE; got != tc.wantHBO {
				t.Fatalf("HBONE = %v, want %v", got, tc.wantHBO)
			}
			if w.GetTunnelTransport() != tc.want {
				t.Errorf("tunnel_transport = %v, want %v", w.GetTunnelTransport(), tc.want)
			}
		})
	}
}

func TestInvalidTunnelTransports(t *testing.T) {
	nss := []*corev1.Namespace{
		{ObjectMeta: metav1.ObjectMeta{Name: "good", Annotations: annotated("quic")}},
		{ObjectMeta: metav1.ObjectMeta{Name: "bad", Annotations: annotated("udp")}},
		{ObjectMeta: metav1.ObjectMeta{Name: "none"}},
	}
	pods := []*corev1.Pod{
		{ObjectMeta: metav1.ObjectMeta{Name: "a", Namespace: "good", Annotations: annotated("h2")}},
		{ObjectMeta: metav1.ObjectMeta{Name: "b", Namespace: "good", Annotations: annotated("H2")}},
	}
	got := InvalidTunnelTransports(nss, pods)
	if diff := cmp.Diff([]string{"Namespace/bad", "Pod/good/b"}, slices.Sorted(maps.Keys(got))); diff != "" {
		t.Fatalf("invalid objects (-want +got):\n%s", diff)
	}
	if !strings.Contains(got["Pod/good/b"], `"H2"`) || !strings.Contains(got["Pod/good/b"], "using h2") {
		t.Errorf("message %q does not say the value and the consequence", got["Pod/good/b"])
	}
	if InvalidTunnelTransports(nss[:1], pods[:1]) != nil {
		t.Error("valid annotations reported")
	}
}
