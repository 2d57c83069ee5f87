package waypointctl

import (
	"errors"
	"fmt"
	"maps"
	"math"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Names and values shared with Istio.
const (
	// GatewayClass is the class of waypoint Gateways, created by the
	// controller when missing.
	GatewayClass = "istio-waypoint"
	// MeshController is the controllerName of GatewayClasses whose Gateways
	// the controller deploys (Istio's constants.ManagedGatewayMeshController).
	MeshController gatewayv1.GatewayController = "istio.io/mesh-controller"
	// ClassDescription is the description of the class the controller
	// creates (the CRD allows 64 bytes).
	ClassDescription = "Waypoints, deployed by istiod-lite"
	// LabelManaged marks every object the controller manages, with value
	// ManagedValue (MeshController made label-safe, as Istio does).
	LabelManaged = "gateway.istio.io/managed"
	ManagedValue = "istio.io-mesh-controller"
	// LabelGatewayName names the Gateway an object belongs to; the Service
	// selects the pods by it.
	LabelGatewayName = "gateway.networking.k8s.io/gateway-name"
	// LabelDataplaneMode "none" keeps the waypoint's own pods out of capture.
	LabelDataplaneMode = "istio.io/dataplane-mode"
	// FieldManager owns the fields the controller applies.
	FieldManager = "istiod-lite"

	// HBONEPort and HBONEProtocol: the one listener a waypoint Gateway must
	// have.
	HBONEPort     gatewayv1.PortNumber   = 15008
	HBONEProtocol gatewayv1.ProtocolType = "HBONE"
)

// Defaults of [Template].
const (
	DefaultImage         = "ambient/waypoint:dev"
	DefaultClusterDomain = "cluster.local"
)

// Ports and paths of the waypoint's container and the mounts it reads.
const (
	monitoringPort = 15020
	readyPort      = 15021
	readyPath      = "/healthz/ready"
	tokenDir       = "/var/run/secrets/tokens"
	rootCertDir    = "/var/run/secrets/istio"
	rootConfigMap  = "istio-ca-root-cert"
	tokenAudience  = "istio-ca"
	tokenLifetime  = 43200 // seconds, as ztunnel's and Istio's
	containerName  = "waypoint"
	nonRootUID     = 65532
)

// Template is what every waypoint Deployment shares.
type Template struct {
	// Image of cmd/waypoint; default DefaultImage.
	Image string
	// XDSAddress is istiod-lite's gRPC address as the waypoint dials it
	// (istiod.<ns>.svc:15012) and XDSServerName the name its certificate
	// carries (istiod.<ns>.svc). Required.
	XDSAddress, XDSServerName string
	// TrustDomain and ClusterID are passed on to the waypoint. Required.
	TrustDomain, ClusterID string
	// ClusterDomain makes the Service's hostname in the Gateway status;
	// default DefaultClusterDomain.
	ClusterDomain string
	// Tracing turns OpenTelemetry tracing on in every waypoint when its
	// OTLPEndpoint is set.
	Tracing Tracing
}

// Tracing is the waypoints' OpenTelemetry tracing (package
// waypoint/tracing), passed as cmd/waypoint's flags.
type Tracing struct {
	// OTLPEndpoint is the collector's OTLP/gRPC host:port
	// (--otlp-endpoint); empty: tracing off.
	OTLPEndpoint string
	// OTLPInsecure speaks plaintext gRPC to it (--otlp-insecure).
	OTLPInsecure bool
	// SamplingPercent is the share of new traces sampled, 0 to 100
	// (--trace-sampling). istiod-lite's flag defaults it to 1, Istio's
	// default; here zero means zero.
	SamplingPercent float64
}

// args are the waypoint's tracing flags (none with tracing off).
func (t Tracing) args() []string {
	if t.OTLPEndpoint == "" {
		return nil
	}
	args := []string{"--otlp-endpoint=" + t.OTLPEndpoint, "--trace-sampling=" + strconv.FormatFloat(t.SamplingPercent, 'g', -1, 64)}
	if t.OTLPInsecure {
		args = append(args, "--otlp-insecure")
	}
	return args
}

func (t Template) withDefaults() Template {
	if t.Image == "" {
		t.Image = DefaultImage
	}
	if t.ClusterDomain == "" {
		t.ClusterDomain = DefaultClusterDomain
	}
	return t
}

func (t Template) check() error {
	if t.XDSAddress == "" || t.XDSServerName == "" || t.TrustDomain == "" || t.ClusterID == "" {
		return errors.New("waypointctl: Template.XDSAddress, XDSServerName, TrustDomain and ClusterID are required")
	}
	if p := t.Tracing.SamplingPercent; math.IsNaN(p) || p < 0 || p > 100 {
		return fmt.Errorf("waypointctl: Template.Tracing.SamplingPercent %v: want a percentage from 0 to 100", p)
	}
	return nil
}

// Why a waypoint Gateway is not deployed; [Check] wraps them with details.
var (
	// ErrNoHBONEListener: the Gateway has no listener on port 15008 with
	// protocol HBONE.
	ErrNoHBONEListener = errors.New(`a waypoint Gateway needs a listener on port 15008 with protocol "HBONE"`)
	// ErrInvalidName: the Gateway's name cannot name a Service and label
	// its pods.
	ErrInvalidName = errors.New("a waypoint Gateway's name must be a DNS-1035 label")
)

// Check reports whether gw can be deployed as a waypoint; its error says
// what to change.
func Check(gw *gatewayv1.Gateway) error {
	if errs := validation.IsDNS1035Label(gw.Name); len(errs) > 0 {
		return fmt.Errorf("%w (it names the Service): %s", ErrInvalidName, strings.Join(errs, "; "))
	}
	if hboneListener(gw) == nil {
		return fmt.Errorf("%w, e.g. {name: mesh, port: 15008, protocol: HBONE}; nothing is deployed until it has one", ErrNoHBONEListener)
	}
	return nil
}

// hboneListener is gw's first listener on 15008 with protocol HBONE, or nil.
func hboneListener(gw *gatewayv1.Gateway) *gatewayv1.Listener {
	for i, l := range gw.Spec.Listeners {
		if l.Port == HBONEPort && l.Protocol == HBONEProtocol {
			return &gw.Spec.Listeners[i]
		}
	}
	return nil
}

// Desired returns the ServiceAccount, Deployment and Service of waypoint
// Gateway gw (which should pass [Check]), as server-side apply
// configurations: exactly the fields the controller owns. All three are
// named after gw, live in its namespace and are controlled by it. Labels
// and annotations of gw.spec.infrastructure are copied onto each object
// and the pod template (the controller's own labels win).
func Desired(gw *gatewayv1.Gateway, cfg Template) (*corev1ac.ServiceAccountApplyConfiguration, *appsv1ac.DeploymentApplyConfiguration, *corev1ac.ServiceApplyConfiguration) {
	cfg = cfg.withDefaults()
	name, ns := gw.Name, gw.Namespace

	infraLabels, infraAnnotations := map[string]string{}, map[string]string{}
	if inf := gw.Spec.Infrastructure; inf != nil {
		for k, v := range inf.Labels {
			infraLabels[string(k)] = string(v)
		}
		for k, v := range inf.Annotations {
			infraAnnotations[string(k)] = string(v)
		}
	}
	selector := map[string]string{LabelGatewayName: name}
	labels := maps.Clone(infraLabels)
	maps.Copy(labels, map[string]string{LabelGatewayName: name, LabelManaged: ManagedValue})
	podLabels := maps.Clone(labels)
	podLabels[LabelDataplaneMode] = "none"
	podLabels["sidecar.istio.io/inject"] = "false"
	podAnnotations := maps.Clone(infraAnnotations)
	maps.Copy(podAnnotations, map[string]string{
		"prometheus.io/scrape": "true",
		"prometheus.io/port":   fmt.Sprint(monitoringPort),
	})
	owner := func() *metav1ac.OwnerReferenceApplyConfiguration {
		return metav1ac.OwnerReference().
			WithAPIVersion(gatewayv1.GroupVersion.String()).
			WithKind("Gateway").
			WithName(name).
			WithUID(gw.UID).
			WithController(true).
			WithBlockOwnerDeletion(true)
	}
	// meta sets what the three objects' metadata share.
	meta := func(m *metav1ac.ObjectMetaApplyConfiguration) {
		m.WithLabels(labels).WithOwnerReferences(owner())
		if len(infraAnnotations) > 0 {
			m.WithAnnotations(infraAnnotations)
		}
	}

	sa := corev1ac.ServiceAccount(name, ns)
	meta(sa.ObjectMetaApplyConfiguration)

	// Defaults (apiVersion, divisor) spelt out: the apiserver records them
	// as applied, and an exact match lets the controller skip re-applies.
	fieldEnv := func(env, path string) *corev1ac.EnvVarApplyConfiguration {
		return corev1ac.EnvVar().WithName(env).WithValueFrom(corev1ac.EnvVarSource().
			WithFieldRef(corev1ac.ObjectFieldSelector().WithAPIVersion("v1").WithFieldPath(path)))
	}
	port := func(name string, p int32) *corev1ac.ContainerPortApplyConfiguration {
		return corev1ac.ContainerPort().WithName(name).WithContainerPort(p).WithProtocol(corev1.ProtocolTCP)
	}
	container := corev1ac.Container().
		WithName(containerName).
		WithImage(cfg.Image).
		WithImagePullPolicy(corev1.PullIfNotPresent).
		WithArgs(
			"--xds-address="+cfg.XDSAddress,
			"--xds-server-name="+cfg.XDSServerName,
			"--ca-root-file="+rootCertDir+"/root-cert.pem",
			"--token-file="+tokenDir+"/istio-token",
			"--trust-domain="+cfg.TrustDomain,
			"--cluster-id="+cfg.ClusterID,
		).
		WithArgs(cfg.Tracing.args()...).
		WithEnv(
			fieldEnv("POD_NAME", "metadata.name"),
			fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("NODE_NAME", "spec.nodeName"),
			fieldEnv("SERVICE_ACCOUNT", "spec.serviceAccountName"),
			corev1ac.EnvVar().WithName("GOMEMLIMIT").WithValueFrom(corev1ac.EnvVarSource().
				WithResourceFieldRef(corev1ac.ResourceFieldSelector().WithResource("limits.memory").WithDivisor(resource.MustParse("0")))),
		).
		WithPorts(
			port("hbone", int32(HBONEPort)),
			port("hbone3", int32(HBONEPort)).WithProtocol(corev1.ProtocolUDP), // HBONE/3, QUIC
			port("http-monitoring", monitoringPort),
			port("http-health", readyPort),
		).
		WithReadinessProbe(corev1ac.Probe().
			WithHTTPGet(corev1ac.HTTPGetAction().WithPath(readyPath).WithPort(intstr.FromInt32(readyPort))).
			WithInitialDelaySeconds(1).
			WithPeriodSeconds(5).
			WithFailureThreshold(4)).
		WithResources(corev1ac.ResourceRequirements().
			WithRequests(corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("100m"),
				corev1.ResourceMemory: resource.MustParse("128Mi"),
			}).
			WithLimits(corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")})).
		WithSecurityContext(corev1ac.SecurityContext().
			WithAllowPrivilegeEscalation(false).
			WithReadOnlyRootFilesystem(true).
			WithPrivileged(false).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL"))).
		WithVolumeMounts(
			corev1ac.VolumeMount().WithName("istiod-ca-cert").WithMountPath(rootCertDir).WithReadOnly(true),
			corev1ac.VolumeMount().WithName("istio-token").WithMountPath(tokenDir).WithReadOnly(true),
		)

	podSpec := corev1ac.PodSpec().
		WithServiceAccountName(name).
		// The waypoint never calls the Kubernetes API: its configuration
		// arrives over xDS; its identity is the projected token below.
		WithAutomountServiceAccountToken(false).
		WithNodeSelector(map[string]string{"kubernetes.io/os": "linux"}).
		WithSecurityContext(corev1ac.PodSecurityContext().
			WithRunAsNonRoot(true).
			WithRunAsUser(nonRootUID).
			WithRunAsGroup(nonRootUID).
			WithSeccompProfile(corev1ac.SeccompProfile().WithType(corev1.SeccompProfileTypeRuntimeDefault))).
		WithContainers(container).
		WithVolumes(
			corev1ac.Volume().WithName("istio-token").WithProjected(corev1ac.ProjectedVolumeSource().
				WithSources(corev1ac.VolumeProjection().WithServiceAccountToken(corev1ac.ServiceAccountTokenProjection().
					WithPath("istio-token").WithAudience(tokenAudience).WithExpirationSeconds(tokenLifetime)))),
			corev1ac.Volume().WithName("istiod-ca-cert").WithConfigMap(corev1ac.ConfigMapVolumeSource().
				WithName(rootConfigMap)),
		)

	// No replicas: the apiserver defaults a new Deployment to 1, and
	// leaving the field unowned lets users and autoscalers scale it, as
	// Istio's template does.
	deploy := appsv1ac.Deployment(name, ns)
	meta(deploy.ObjectMetaApplyConfiguration)
	deploy.WithSpec(appsv1ac.DeploymentSpec().
		WithSelector(metav1ac.LabelSelector().WithMatchLabels(selector)).
		WithTemplate(corev1ac.PodTemplateSpec().
			WithLabels(podLabels).
			WithAnnotations(podAnnotations).
			WithSpec(podSpec)))

	svc := corev1ac.Service(name, ns)
	meta(svc.ObjectMetaApplyConfiguration)
	svc.WithSpec(corev1ac.ServiceSpec().
		WithType(corev1.ServiceTypeClusterIP).
		WithSelector(selector).
		WithPorts(corev1ac.ServicePort().
			// Istio's name and appProtocol for a waypoint's HBONE port.
			WithName("mesh").
			WithAppProtocol("all").
			WithProtocol(corev1.ProtocolTCP).
			WithPort(int32(HBONEPort)).
			WithTargetPort(intstr.FromInt32(int32(HBONEPort)))))
	return sa, deploy, svc
}
