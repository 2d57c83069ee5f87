package podenv

import (
	"context"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Volumes. Each pod volume is a directory <volumes-dir>/<volume>; a
// container's volumeMounts become its path map (see PathMap), so a program
// given --token=/var/run/secrets/tokens/istio-token reads
// <volumes-dir>/<volume>/istio-token. Supported: emptyDir, configMap,
// secret, downwardAPI, projected (serviceAccountToken, configMap, secret,
// downwardAPI) and hostPath (the host path itself, or its place under the
// node's host-path root: see HostPathMap).
// ServiceAccount tokens come from the TokenRequest API, bound to the pod;
// Write reports when the earliest should be refreshed (at 80% of its
// lifetime), and rewriting then also refreshes ConfigMaps and Secrets.

// defaultTokenExpiry is a projected token's lifetime when unset.
const defaultTokenExpiry = 3600

// VolumeWriter materializes a pod's volumes.
type VolumeWriter struct {
	Client kubernetes.Interface
	Pod    *v1.Pod
	Dir    string // the pod's volumes directory
	Now    func() time.Time
	// HostPaths places hostPath volumes (zero: the real paths).
	HostPaths HostPathMap
}

// Write (re)writes every volume and returns when the earliest token needs
// refreshing (zero if there is no token).
func (w *VolumeWriter) Write(ctx context.Context, in Input) (time.Time, error) {
	var refresh time.Time
	for _, vol := range w.Pod.Spec.Volumes {
		dir := filepath.Join(w.Dir, vol.Name)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return time.Time{}, fmt.Errorf("volume %s: %w", vol.Name, err)
		}
		var files map[string]fileContent
		var err error
		switch {
		case vol.HostPath != nil:
			if err := w.HostPaths.prepare(vol.HostPath); err != nil {
				return time.Time{}, fmt.Errorf("volume %s: %w", vol.Name, err)
			}
			continue
		case vol.EmptyDir != nil:
			continue
		case vol.ConfigMap != nil:
			files, err = w.configMapFiles(ctx, vol.ConfigMap.Name, vol.ConfigMap.Items, vol.ConfigMap.Optional, vol.ConfigMap.DefaultMode)
		case vol.Secret != nil:
			files, err = w.secretFiles(ctx, vol.Secret.SecretName, vol.Secret.Items, vol.Secret.Optional, vol.Secret.DefaultMode)
		case vol.DownwardAPI != nil:
			files, err = downwardFiles(in, vol.DownwardAPI.Items, vol.DownwardAPI.DefaultMode)
		case vol.Projected != nil:
			var r time.Time
			files, r, err = w.projectedFiles(ctx, in, vol.Projected)
			if !r.IsZero() && (refresh.IsZero() || r.Before(refresh)) {
				refresh = r
			}
		default:
			err = fmt.Errorf("unsupported volume type (supported: emptyDir, configMap, secret, downwardAPI, projected, hostPath)")
		}
		if err != nil {
			return time.Time{}, fmt.Errorf("volume %s: %w", vol.Name, err)
		}
		for rel, f := range files {
			if err := WriteFileAtomic(dir, rel, f.data, f.mode); err != nil {
				return time.Time{}, fmt.Errorf("volume %s: %w", vol.Name, err)
			}
		}
	}
	return refresh, nil
}

type fileContent struct {
	data []byte
	mode os.FileMode
}

func mode(m *int32, def os.FileMode) os.FileMode {
	if m != nil {
		return os.FileMode(*m) & 0o777
	}
	return def
}

func keyFiles(data map[string][]byte, items []v1.KeyToPath, defMode *int32) (map[string]fileContent, error) {
	files := map[string]fileContent{}
	dm := mode(defMode, 0o644)
	if len(items) == 0 {
		for k, v := range data {
			files[k] = fileContent{v, dm}
		}
		return files, nil
	}
	for _, it := range items {
		v, ok := data[it.Key]
		if !ok {
			return nil, fmt.Errorf("key %q not found", it.Key)
		}
		files[it.Path] = fileContent{v, mode(it.Mode, dm)}
	}
	return files, nil
}

func (w *VolumeWriter) configMapFiles(ctx context.Context, name string, items []v1.KeyToPath, optional *bool, defMode *int32) (map[string]fileContent, error) {
	cm, err := w.Client.CoreV1().ConfigMaps(w.Pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("configmap %s: %w", name, err)
	}
	data := map[string][]byte{}
	for k, v := range cm.Data {
		data[k] = []byte(v)
	}
	for k, v := range cm.BinaryData {
		data[k] = v
	}
	return keyFiles(data, items, defMode)
}

func (w *VolumeWriter) secretFiles(ctx context.Context, name string, items []v1.KeyToPath, optional *bool, defMode *int32) (map[string]fileContent, error) {
	s, err := w.Client.CoreV1().Secrets(w.Pod.Namespace).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) && optional != nil && *optional {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("secret %s: %w", name, err)
	}
	return keyFiles(s.Data, items, defMode)
}

func downwardFiles(in Input, items []v1.DownwardAPIVolumeFile, defMode *int32) (map[string]fileContent, error) {
	files := map[string]fileContent{}
	for _, it := range items {
		var v string
		var err error
		switch {
		case it.FieldRef != nil:
			v, err = fieldRef(in, it.FieldRef.FieldPath)
		case it.ResourceFieldRef != nil:
			c := &v1.Container{}
			if len(in.Pod.Spec.Containers) > 0 {
				c = &in.Pod.Spec.Containers[0]
			}
			v, err = resourceFieldRef(in, c, it.ResourceFieldRef)
		}
		if err != nil {
			return nil, err
		}
		files[it.Path] = fileContent{[]byte(v), mode(it.Mode, mode(defMode, 0o644))}
	}
	return files, nil
}

func (w *VolumeWriter) projectedFiles(ctx context.Context, in Input, p *v1.ProjectedVolumeSource) (map[string]fileContent, time.Time, error) {
	files := map[string]fileContent{}
	var refresh time.Time
	for _, src := range p.Sources {
		var part map[string]fileContent
		var err error
		switch {
		case src.ServiceAccountToken != nil:
			var r time.Time
			part, r, err = w.tokenFile(ctx, src.ServiceAccountToken, p.DefaultMode)
			if refresh.IsZero() || r.Before(refresh) {
				refresh = r
			}
		case src.ConfigMap != nil:
			part, err = w.configMapFiles(ctx, src.ConfigMap.Name, src.ConfigMap.Items, src.ConfigMap.Optional, p.DefaultMode)
		case src.Secret != nil:
			part, err = w.secretFiles(ctx, src.Secret.Name, src.Secret.Items, src.Secret.Optional, p.DefaultMode)
		case src.DownwardAPI != nil:
			part, err = downwardFiles(in, src.DownwardAPI.Items, p.DefaultMode)
		default:
			err = fmt.Errorf("unsupported projected source")
		}
		if err != nil {
			return nil, time.Time{}, err
		}
		for k, v := range part {
			files[k] = v
		}
	}
	return files, refresh, nil
}

// tokenFile requests a token bound to the pod, as a kubelet does.
func (w *VolumeWriter) tokenFile(ctx context.Context, src *v1.ServiceAccountTokenProjection, defMode *int32) (map[string]fileContent, time.Time, error) {
	exp := int64(defaultTokenExpiry)
	if src.ExpirationSeconds != nil {
		exp = *src.ExpirationSeconds
	}
	sa := w.Pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	req := &authv1.TokenRequest{Spec: authv1.TokenRequestSpec{
		ExpirationSeconds: &exp,
		BoundObjectRef:    &authv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: w.Pod.Name, UID: w.Pod.UID},
	}}
	if src.Audience != "" {
		req.Spec.Audiences = []string{src.Audience}
	}
	start := w.Now()
	tr, err := w.Client.CoreV1().ServiceAccounts(w.Pod.Namespace).CreateToken(ctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("token for serviceaccount %s: %w", sa, err)
	}
	life := tr.Status.ExpirationTimestamp.Sub(start)
	if life <= 0 {
		life = time.Duration(exp) * time.Second
	}
	refresh := start.Add(life * 8 / 10)
	return map[string]fileContent{src.Path: {[]byte(tr.Status.Token), mode(defMode, 0o600)}}, refresh, nil
}

// WriteFileAtomic writes dir/rel through a temporary file and rename, so
// readers never see a partial token.
func WriteFileAtomic(dir, rel string, data []byte, perm os.FileMode) error {
	clean := filepath.Clean("/" + rel)
	if strings.Contains(rel, "..") {
		return fmt.Errorf("bad path %q", rel)
	}
	p := filepath.Join(dir, clean)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return err
	}
	tmp := p + ".tmp"
	if err := os.WriteFile(tmp, data, perm); err != nil {
		return err
	}
	if err := os.Chmod(tmp, perm); err != nil {
		return err
	}
	return os.Rename(tmp, p)
}

// MountPaths builds a container's path map from its volumeMounts, with
// hostPath volumes placed by hp.
func MountPaths(pod *v1.Pod, c *v1.Container, volDir string, hp HostPathMap) (PathMap, error) {
	vols := map[string]*v1.Volume{}
	for i := range pod.Spec.Volumes {
		vols[pod.Spec.Volumes[i].Name] = &pod.Spec.Volumes[i]
	}
	var m []Mapping
	for _, vm := range c.VolumeMounts {
		vol, ok := vols[vm.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %s: no volume %q", vm.MountPath, vm.Name)
		}
		host := filepath.Join(volDir, vm.Name)
		if vol.HostPath != nil {
			host = hp.Map(vol.HostPath.Path)
		}
		if vm.SubPath != "" {
			if strings.Contains(vm.SubPath, "..") {
				return nil, fmt.Errorf("volumeMount %s: bad subPath %q", vm.MountPath, vm.SubPath)
			}
			host = filepath.Join(host, vm.SubPath)
		}
		m = append(m, Mapping{MountPath: filepath.Clean(vm.MountPath), HostPath: host})
	}
	return NewPathMap(m), nil
}

// ServiceAccountMountPath is where Kubernetes mounts a pod's API token.
const ServiceAccountMountPath = "/var/run/secrets/kubernetes.io/serviceaccount"

// SAHostDir returns where a container's ServiceAccount mount lives on the
// host, if it has one.
func SAHostDir(pm PathMap) (string, bool) {
	r, ok := pm.rewritePath(ServiceAccountMountPath)
	return r, ok
}

// PodKubeconfig is a kubeconfig for server with the token and CA files of
// a ServiceAccount mount; client-go re-reads tokenFile, so refreshed
// tokens are used.
func PodKubeconfig(server, saDir string) []byte {
	return fmt.Appendf(nil, `apiVersion: v1
kind: Config
clusters:
- name: cluster
  cluster:
    server: %q
    certificate-authority: %q
users:
- name: pod
  user:
    tokenFile: %q
contexts:
- name: pod
  context:
    cluster: cluster
    user: pod
current-context: pod
`, server, filepath.Join(saDir, "ca.crt"), filepath.Join(saDir, "token"))
}

// APIServerEnv is $KUBECONFIG (kubeconfig, the pod's PodKubeconfig) and
// $KUBERNETES_SERVICE_HOST/PORT for a container with a ServiceAccount
// mount; none without a server.
func APIServerEnv(server, kubeconfig string, pm PathMap) []string {
	if server == "" {
		return nil
	}
	if _, ok := SAHostDir(pm); !ok {
		return nil
	}
	env := []string{"KUBECONFIG=" + kubeconfig}
	if u, err := url.Parse(server); err == nil && u.Hostname() != "" {
		port := u.Port()
		if port == "" {
			port = "443"
		}
		env = append(env, "KUBERNETES_SERVICE_HOST="+u.Hostname(), "KUBERNETES_SERVICE_PORT="+port)
	}
	return env
}
