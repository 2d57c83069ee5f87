package manifests_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

const (
	installDir = "."
	shopDir    = "samples/shop"
	tracingDir = "samples/tracing"
	system     = "istio-system"
)

// Our images are ambient/<binary>:dev, built by build/docker/<binary>.Dockerfile.
func binaryOf(image string) (string, bool) {
	name, ok := strings.CutPrefix(image, "ambient/")
	if !ok {
		return "", false
	}
	name, _, ok = strings.Cut(name, ":")
	return name, ok
}

func TestKustomization_IncludesEveryCRD(t *testing.T) {
	r := render(t, installDir)
	files, err := filepath.Glob("crds/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("crds/*.yaml: %v %v", files, err)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for doc := range strings.SplitSeq(string(b), "\n---") {
			var m struct {
				Kind     string
				Metadata struct{ Name string }
			}
			if err := yaml.Unmarshal([]byte(doc), &m); err != nil {
				t.Fatalf("%s: %v", f, err)
			}
			if m.Kind != "CustomResourceDefinition" {
				continue
			}
			if !slices.ContainsFunc(r.ofKind("CustomResourceDefinition"), func(u *unstructured.Unstructured) bool { return u.GetName() == m.Metadata.Name }) {
				t.Errorf("CRD %s (%s) is not installed: add %s to kustomization.yaml", m.Metadata.Name, f, f)
			}
		}
	}
}

// The rendered install (CRDs aside: they have their own files) and the
// samples are golden files, so a change to what users apply shows in review.
func TestRender_MatchesGolden(t *testing.T) {
	for _, tc := range []struct{ dir, golden string }{
		{installDir, "install.golden.yaml"}, {shopDir, "shop.golden.yaml"}, {tracingDir, "tracing.golden.yaml"},
	} {
		t.Run(tc.golden, func(t *testing.T) {
			var buf bytes.Buffer
			for _, o := range render(t, tc.dir).objs {
				if o.GetKind() == "CustomResourceDefinition" {
					continue
				}
				b, err := yaml.Marshal(o.Object)
				if err != nil {
					t.Fatal(err)
				}
				buf.WriteString("---\n")
				buf.Write(b)
			}
			goldenCompare(t, tc.golden, buf.Bytes())
		})
	}
}

// Every flag in a container's args is one its binary accepts, with a value
// of the right type: the binary parses the manifest's args followed by
// -help and must exit 0 (a usage error exits 2).
func TestManifests_FlagsAreAcceptedByBinaries(t *testing.T) {
	bin := buildBinaries(t)
	checked := map[string]bool{}
	for _, dir := range []string{installDir, shopDir, tracingDir} {
		for key, tmpl := range podSpecs(t, render(t, dir)) {
			for _, c := range tmpl.Spec.Containers {
				name, ok := binaryOf(c.Image)
				if !ok {
					t.Errorf("%s container %s: image %q is not one of ours (ambient/<binary>:dev)", key, c.Name, c.Image)
					continue
				}
				if len(c.Command) > 0 {
					continue // the CNI node agent: TestInstallCNI_*
				}
				for _, a := range c.Args {
					if !strings.HasPrefix(a, "--") || !strings.Contains(a, "=") {
						t.Errorf("%s: arg %q: write flags as --name=value", key, a)
					}
				}
				cmd := exec.Command(filepath.Join(bin, name), append(slices.Clone(c.Args), "-help")...)
				cmd.Env = []string{"NODE_NAME=node-1", "POD_NAMESPACE=" + system}
				out, err := cmd.CombinedOutput()
				if err != nil {
					t.Errorf("%s: %s %s -help: %v\n%s", key, name, strings.Join(c.Args, " "), err, out)
				}
				checked[name] = true
			}
		}
	}
	for _, want := range []string{"ztunnel", "istiod-lite", "sampleapp"} {
		if !checked[want] {
			t.Errorf("no container runs %s", want)
		}
	}
}

func TestImages_HaveDockerfiles(t *testing.T) {
	images := map[string]bool{}
	for _, dir := range []string{installDir, shopDir, tracingDir} {
		for _, tmpl := range podSpecs(t, render(t, dir)) {
			for _, c := range tmpl.Spec.Containers {
				images[c.Image] = true
			}
		}
	}
	for image := range images {
		name, ok := binaryOf(image)
		if !ok {
			continue
		}
		df := filepath.Join("..", "build", "docker", name+".Dockerfile")
		b, err := os.ReadFile(df)
		if err != nil {
			t.Errorf("image %s: %v", image, err)
			continue
		}
		if !bytes.Contains(b, []byte("-t "+image)) {
			t.Errorf("%s does not say how to build %s", df, image)
		}
		// An image of ours (not a tool image such as curl) builds its command.
		if _, err := os.Stat(filepath.Join("..", "cmd", name)); err == nil && !bytes.Contains(b, []byte("./cmd/"+name)) {
			t.Errorf("%s does not build ./cmd/%s", df, name)
		}
	}
}

// ztunnel reaches istiod-lite through the Service, with the root the CA
// publishes and a token for the CA's audience; it shares the CNI socket
// and state directory with the plugin the node agent installs.
func TestZtunnel_WiredToIstiodAndCNI(t *testing.T) {
	r := render(t, installDir)
	ds := daemonSet(t, r, system, "ztunnel")
	spec := ds.Spec.Template.Spec
	if len(spec.Containers) != 1 {
		t.Fatalf("ztunnel has %d containers", len(spec.Containers))
	}
	c := spec.Containers[0]
	args := c.Args
	if !spec.HostNetwork || spec.DNSPolicy != corev1.DNSClusterFirstWithHostNet {
		t.Errorf("hostNetwork %v dnsPolicy %q, want host network resolving Services", spec.HostNetwork, spec.DNSPolicy)
	}
	if c.SecurityContext == nil || c.SecurityContext.Privileged == nil || !*c.SecurityContext.Privileged {
		t.Error("ztunnel is not privileged; it must enter pods' network namespaces")
	}

	// xDS and CA: the istiod Service, its port, its certificate's name.
	host, p := urlPort(t, "grpc://"+flagValue(args, "xds-address"))
	svc := service(t, r, system, "istiod")
	if host != svc.Name+"."+svc.Namespace+".svc" {
		t.Errorf("--xds-address host %q, want the Service istiod.istio-system.svc", host)
	}
	if !slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Port == p }) {
		t.Errorf("--xds-address port %d is not a port of Service istiod", p)
	}
	if got := flagValue(args, "xds-server-name"); got != host {
		t.Errorf("--xds-server-name %q, want %q", got, host)
	}
	dep := deployment(t, r, system, "istiod-lite")
	proxies := flagValues(dep.Spec.Template.Spec.Containers[0].Args, "node-proxy")
	if want := ds.Namespace + "/" + spec.ServiceAccountName; !slices.Contains(proxies, want) {
		t.Errorf("istiod-lite --node-proxy %v lacks ztunnel's ServiceAccount %s", proxies, want)
	}

	// The root certificate: the ConfigMap istiod-lite publishes.
	rootFile := flagValue(args, "ca-root-file")
	v, m := mountFor(t, spec, c, rootFile)
	if m.MountPath != filepath.Dir(rootFile) || v.ConfigMap == nil || v.ConfigMap.Name != "istio-ca-root-cert" || filepath.Base(rootFile) != "root-cert.pem" || len(v.ConfigMap.Items) != 0 {
		t.Errorf("--ca-root-file %s: volume %+v, want ConfigMap istio-ca-root-cert's key root-cert.pem", rootFile, v)
	}
	// The token: projected, audience istio-ca, bound to the pod.
	tokenFile := flagValue(args, "token-file")
	v, m = mountFor(t, spec, c, tokenFile)
	if m.MountPath != filepath.Dir(tokenFile) || v.Projected == nil || len(v.Projected.Sources) != 1 || v.Projected.Sources[0].ServiceAccountToken == nil ||
		v.Projected.Sources[0].ServiceAccountToken.Audience != "istio-ca" ||
		v.Projected.Sources[0].ServiceAccountToken.Path != filepath.Base(tokenFile) {
		t.Errorf("--token-file %s: volume %+v, want a projected token with audience istio-ca", tokenFile, v)
	}
	if e, ok := envValue(c, "NODE_NAME"); !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "spec.nodeName" {
		t.Errorf("NODE_NAME %+v, want the downward API's spec.nodeName", e)
	}

	// Readiness: the port of --ready-addr.
	rp := c.ReadinessProbe
	if rp == nil || rp.HTTPGet == nil || rp.HTTPGet.Path != "/healthz/ready" || rp.HTTPGet.Port.IntVal != port(t, flagValue(args, "ready-addr")) {
		t.Errorf("readiness probe %+v, want /healthz/ready on --ready-addr", rp)
	}

	// CNI: the socket and the state directory are host paths seen at the
	// same path inside ztunnel, and the plugin is configured with them.
	sock, state := flagValue(args, "cni-socket"), flagValue(args, "cni-state-dir")
	for _, f := range []string{sock, state + "/x"} {
		v, m := mountFor(t, spec, c, f)
		if v.HostPath == nil || v.HostPath.Path != m.MountPath {
			t.Errorf("%s is not on a host path mounted at the same place: %+v", f, v)
		}
	}
	agent := daemonSet(t, r, system, "ambient-cni-node").Spec.Template.Spec.Containers[0]
	for name, want := range map[string]string{"ZTUNNEL_SOCKET": sock, "STATE_DIR": state} {
		if e, _ := envValue(agent, name); e.Value != want {
			t.Errorf("ambient-cni-node %s=%q, want ztunnel's %q", name, e.Value, want)
		}
	}
}

// istiod-lite's container ports, probe and Service match its flags.
func TestIstiod_DeploymentMatchesFlags(t *testing.T) {
	r := render(t, installDir)
	dep := deployment(t, r, system, "istiod-lite")
	if dep.Spec.Replicas == nil || *dep.Spec.Replicas != 1 {
		t.Errorf("replicas %v, want 1", dep.Spec.Replicas)
	}
	c := dep.Spec.Template.Spec.Containers[0]
	ports := map[string]int32{}
	for _, cp := range c.Ports {
		ports[cp.Name] = cp.ContainerPort
	}
	for name, flagName := range map[string]string{"grpc-xds": "grpc-addr", "http-monitoring": "monitoring-addr", "http-ready": "ready-addr"} {
		if got, want := ports[name], port(t, flagValue(c.Args, flagName)); got != want {
			t.Errorf("container port %s = %d, want --%s's %d", name, got, flagName, want)
		}
	}
	if rp := c.ReadinessProbe; rp == nil || rp.HTTPGet == nil || rp.HTTPGet.Path != "/ready" || rp.HTTPGet.Port.IntVal != ports["http-ready"] {
		t.Errorf("readiness probe %+v, want GET /ready on the ready port", rp)
	}
	if e, ok := envValue(c, "POD_NAMESPACE"); !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.namespace" {
		t.Errorf("POD_NAMESPACE %+v, want the downward API's metadata.namespace", e)
	}
	// The leader election's identity: the pod's name, not the host name a
	// pod without its own UTS namespace would share.
	if e, ok := envValue(c, "POD_NAME"); !ok || e.ValueFrom == nil || e.ValueFrom.FieldRef == nil || e.ValueFrom.FieldRef.FieldPath != "metadata.name" {
		t.Errorf("POD_NAME %+v, want the downward API's metadata.name", e)
	}
	svc := service(t, r, system, "istiod")
	if !labels.SelectorFromSet(svc.Spec.Selector).Matches(labels.Set(dep.Spec.Template.Labels)) {
		t.Errorf("Service istiod selects %v, not istiod-lite's pods %v", svc.Spec.Selector, dep.Spec.Template.Labels)
	}
	for _, sp := range svc.Spec.Ports {
		if want, ok := ports[sp.Name]; !ok || sp.TargetPort.IntVal != want || sp.Port != want {
			t.Errorf("Service port %s %d → %s, want the container port %d", sp.Name, sp.Port, sp.TargetPort.String(), want)
		}
	}
}

// Each sample service has its own ServiceAccount (its own SPIFFE
// identity), each Service selects pods, and every --upstream names a
// Service port of the sample.
func TestShop_ServicesIdentitiesAndCalls(t *testing.T) {
	r := render(t, shopDir)
	sas := map[string]bool{}
	for _, o := range r.ofKind("ServiceAccount") {
		sas[o.GetName()] = true
	}
	tmpls := podSpecs(t, r)
	if len(tmpls) < 4 {
		t.Fatalf("%d workloads, want frontend, reviews v1 and v2, ratings", len(tmpls))
	}
	saOfApp := map[string]string{}
	versions := map[string][]string{}
	for key, tmpl := range tmpls {
		if tmpl.Namespace != "" && tmpl.Namespace != "shop" {
			t.Errorf("%s: template namespace %q", key, tmpl.Namespace)
		}
		app, sa := tmpl.Labels["app"], tmpl.Spec.ServiceAccountName
		if !sas[sa] {
			t.Errorf("%s: ServiceAccount %q is not in the sample", key, sa)
		}
		if prev, ok := saOfApp[app]; ok && prev != sa {
			t.Errorf("app %s runs as both %s and %s", app, prev, sa)
		}
		saOfApp[app] = sa
		c := tmpl.Spec.Containers[0]
		if v := flagValue(c.Args, "version"); v != tmpl.Labels["version"] {
			t.Errorf("%s: --version %q but label version %q", key, v, tmpl.Labels["version"])
		}
		versions[app] = append(versions[app], tmpl.Labels["version"])
		for _, up := range flagValues(c.Args, "upstream") {
			host, p := urlPort(t, up)
			name, rest, _ := strings.Cut(host, ".")
			if rest != "shop.svc.cluster.local" {
				t.Errorf("%s: --upstream %s: want <service>.shop.svc.cluster.local", key, up)
				continue
			}
			svc := service(t, r, "shop", name)
			if !slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Port == p }) {
				t.Errorf("%s: --upstream %s: Service %s has no port %d", key, up, name, p)
			}
		}
	}
	seen := map[string]string{}
	for app, sa := range saOfApp {
		if other, dup := seen[sa]; dup {
			t.Errorf("apps %s and %s share ServiceAccount %s: their identities would be the same", app, other, sa)
		}
		seen[sa] = app
	}
	if v := versions["reviews"]; len(v) != 2 {
		t.Errorf("reviews versions %v, want v1 and v2", v)
	}
	for _, o := range r.ofKind("Service") {
		svc := into[corev1.Service](t, o)
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		n := 0
		for _, tmpl := range tmpls {
			if sel.Matches(labels.Set(tmpl.Labels)) {
				n++
				for _, sp := range svc.Spec.Ports {
					if !slices.ContainsFunc(tmpl.Spec.Containers[0].Ports, func(cp corev1.ContainerPort) bool { return cp.Name == sp.TargetPort.StrVal }) {
						t.Errorf("Service %s port %s targets %q, not a named port of its pods", svc.Name, sp.Name, sp.TargetPort.String())
					}
				}
			}
		}
		if n == 0 {
			t.Errorf("Service %s selects no workload", svc.Name)
		}
	}
}
