package podenv

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// APILookups reads ConfigMaps and Secrets from the API.
type APILookups struct {
	Ctx    context.Context
	Client kubernetes.Interface
}

func (l APILookups) ConfigMapData(ns, name string) (map[string]string, bool, error) {
	cm, err := l.Client.CoreV1().ConfigMaps(ns).Get(l.Ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("configmap %s: %w", name, err)
	}
	return cm.Data, true, nil
}

func (l APILookups) SecretData(ns, name string) (map[string]string, bool, error) {
	s, err := l.Client.CoreV1().Secrets(ns).Get(l.Ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("secret %s: %w", name, err)
	}
	out := make(map[string]string, len(s.Data))
	for k, v := range s.Data {
		out[k] = string(v)
	}
	return out, true, nil
}

func (l APILookups) ConfigMapKey(ns, name, key string) (string, bool, error) {
	d, ok, err := l.ConfigMapData(ns, name)
	if !ok || err != nil {
		return "", false, err
	}
	v, ok := d[key]
	return v, ok, nil
}

func (l APILookups) SecretKey(ns, name, key string) (string, bool, error) {
	d, ok, err := l.SecretData(ns, name)
	if !ok || err != nil {
		return "", false, err
	}
	v, ok := d[key]
	return v, ok, nil
}
