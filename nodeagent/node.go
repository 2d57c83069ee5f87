package nodeagent

import (
	"context"
	"fmt"
	"net/netip"
	"runtime"
	"time"

	coordv1 "k8s.io/api/coordination/v1"
	v1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
)

// Version is what the Node reports as its kubelet version.
const Version = "v0.0.0-nodeagent"

// leaseDuration is the node Lease's duration (a kubelet's default).
const leaseDuration = 40

// register creates or updates the Node and waits for its pod CIDR.
func (a *Agent) register(ctx context.Context) error {
	nodes := a.cfg.Client.CoreV1().Nodes()
	labels := map[string]string{
		"kubernetes.io/hostname": a.cfg.NodeName,
		"kubernetes.io/os":       runtime.GOOS,
		"kubernetes.io/arch":     runtime.GOARCH,
	}
	for k, v := range a.cfg.Labels {
		labels[k] = v
	}
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		n, err := nodes.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			n = &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName, Labels: labels}}
			if a.cfg.PodCIDR.IsValid() {
				n.Spec.PodCIDR = a.cfg.PodCIDR.String()
				n.Spec.PodCIDRs = []string{n.Spec.PodCIDR}
			}
			if n, err = nodes.Create(ctx, n, metav1.CreateOptions{}); err != nil {
				a.log.Warn("creating the node", "err", err)
				return false, nil
			}
		} else if err != nil {
			a.log.Warn("getting the node", "err", err)
			return false, nil
		}
		changed := false
		if n.Labels == nil {
			n.Labels = map[string]string{}
		}
		for k, v := range labels {
			if n.Labels[k] != v {
				n.Labels[k], changed = v, true
			}
		}
		if n.Spec.PodCIDR == "" && a.cfg.PodCIDR.IsValid() {
			n.Spec.PodCIDR = a.cfg.PodCIDR.String()
			n.Spec.PodCIDRs = []string{n.Spec.PodCIDR}
			changed = true
		}
		if changed {
			if n, err = nodes.Update(ctx, n, metav1.UpdateOptions{}); err != nil {
				a.log.Warn("updating the node", "err", err)
				return false, nil
			}
		}
		if n.Spec.PodCIDR == "" {
			a.log.Info("waiting for the controller-manager to allocate a pod CIDR (or pass one)")
			return false, nil
		}
		p, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil {
			return false, fmt.Errorf("nodeagent: node %s has pod CIDR %q: %w", a.cfg.NodeName, n.Spec.PodCIDR, err)
		}
		a.podCIDR = p
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("nodeagent: registering node %s: %w", a.cfg.NodeName, err)
	}
	return a.updateNodeStatus(ctx)
}

// updateNodeStatus posts Ready with a fresh heartbeat.
func (a *Agent) updateNodeStatus(ctx context.Context) error {
	nodes := a.cfg.Client.CoreV1().Nodes()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		n, err := nodes.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
		if err != nil {
			return err
		}
		n.Status = nodeStatus(n.Status, a.cfg, time.Now())
		_, err = nodes.UpdateStatus(ctx, n, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("nodeagent: node status: %w", err)
	}
	return nil
}

// nodeStatus computes the Node's status: Ready and no pressure, address,
// capacity, node info. Transition times move only on a change.
func nodeStatus(old v1.NodeStatus, cfg Config, now time.Time) v1.NodeStatus {
	st := *old.DeepCopy()
	st.Capacity = cfg.Capacity.DeepCopy()
	st.Allocatable = cfg.Capacity.DeepCopy()
	st.Addresses = []v1.NodeAddress{
		{Type: v1.NodeInternalIP, Address: cfg.NodeIP.String()},
		{Type: v1.NodeHostName, Address: cfg.NodeName},
	}
	st.DaemonEndpoints.KubeletEndpoint.Port = int32(cfg.KubeletPort)
	st.NodeInfo.KubeletVersion = Version
	st.NodeInfo.OperatingSystem = runtime.GOOS
	st.NodeInfo.Architecture = runtime.GOARCH
	st.NodeInfo.ContainerRuntimeVersion = "nodeagent://" + Version
	conds := []v1.NodeCondition{
		{Type: v1.NodeReady, Status: v1.ConditionTrue, Reason: "KubeletReady", Message: "node agent is posting ready status"},
		{Type: v1.NodeMemoryPressure, Status: v1.ConditionFalse, Reason: "KubeletHasSufficientMemory"},
		{Type: v1.NodeDiskPressure, Status: v1.ConditionFalse, Reason: "KubeletHasNoDiskPressure"},
		{Type: v1.NodePIDPressure, Status: v1.ConditionFalse, Reason: "KubeletHasSufficientPID"},
	}
	for _, c := range conds {
		c.LastHeartbeatTime = metav1.NewTime(now)
		found := false
		for i := range st.Conditions {
			if st.Conditions[i].Type == c.Type {
				found = true
				if st.Conditions[i].Status != c.Status {
					st.Conditions[i].LastTransitionTime = metav1.NewTime(now)
				} else {
					c.LastTransitionTime = st.Conditions[i].LastTransitionTime
				}
				if c.LastTransitionTime.IsZero() {
					c.LastTransitionTime = metav1.NewTime(now)
				}
				st.Conditions[i] = c
			}
		}
		if !found {
			c.LastTransitionTime = metav1.NewTime(now)
			st.Conditions = append(st.Conditions, c)
		}
	}
	return st
}

// heartbeat renews the Lease and the Node's status every StatusPeriod.
func (a *Agent) heartbeat(ctx context.Context) {
	t := time.NewTicker(a.cfg.StatusPeriod)
	defer t.Stop()
	for {
		if err := a.renewLease(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("node lease", "err", err)
		}
		if err := a.updateNodeStatus(ctx); err != nil && ctx.Err() == nil {
			a.log.Warn("node status", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (a *Agent) renewLease(ctx context.Context) error {
	leases := a.cfg.Client.CoordinationV1().Leases("kube-node-lease")
	now := metav1.NewMicroTime(time.Now())
	holder, dur := a.cfg.NodeName, int32(leaseDuration)
	l, err := leases.Get(ctx, a.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		l = &coordv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: a.cfg.NodeName},
			Spec:       coordv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur, RenewTime: &now},
		}
		_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &holder, &dur, &now
	_, err = leases.Update(ctx, l, metav1.UpdateOptions{})
	return err
}
