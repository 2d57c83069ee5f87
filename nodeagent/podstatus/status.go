// Package podstatus computes a pod's status from what the node agent
// knows of its containers, as a kubelet does: phase, conditions
// (PodScheduled, PodReadyToStartContainers, Initialized, ContainersReady,
// Ready) and container statuses. It is a pure function of the old status,
// the pod and a View.
package podstatus

import (
	"time"

	v1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Container is what the status needs of one container.
type Container struct {
	Name         string
	Image        string
	ContainerID  string
	Running      bool
	StartedAt    time.Time
	Ready        bool
	RestartCount int32
	// Terminated is the current run's end, when it will not be restarted,
	// or while it waits for its restart (then it is the last state).
	Terminated *v1.ContainerStateTerminated
	// WaitReason/WaitMessage: why a container that is not running waits.
	WaitReason, WaitMessage string
	// Restarting: the container exited and will be started again.
	Restarting bool
}

// View is what the status needs of one pod.
type View struct {
	HostIP       string
	PodIPs       []string
	StartTime    time.Time
	SandboxReady bool
	Containers   []Container
}

// Compute returns the pod's new status from its old one (fields the
// agent does not own, such as qosClass and other conditions, are kept) and
// the agent's view. Condition transition times move only on a change.
func Compute(old v1.PodStatus, pod *v1.Pod, view View, now time.Time) v1.PodStatus {
	st := *old.DeepCopy()
	st.HostIP = view.HostIP
	st.HostIPs = nil
	if view.HostIP != "" {
		st.HostIPs = []v1.HostIP{{IP: view.HostIP}}
	}
	st.PodIP, st.PodIPs = "", nil
	for i, ip := range view.PodIPs {
		if i == 0 {
			st.PodIP = ip
		}
		st.PodIPs = append(st.PodIPs, v1.PodIP{IP: ip})
	}
	if st.StartTime == nil && !view.StartTime.IsZero() {
		t := metav1.NewTime(view.StartTime)
		st.StartTime = &t
	}
	st.ContainerStatuses = nil
	allReady := len(view.Containers) > 0
	var waiting, running, stopped, succeeded int
	for _, c := range view.Containers {
		cs := v1.ContainerStatus{
			Name:         c.Name,
			Image:        c.Image,
			ImageID:      "nodeagent://" + c.Image,
			ContainerID:  c.ContainerID,
			Ready:        c.Ready,
			RestartCount: c.RestartCount,
		}
		started := c.Running
		cs.Started = &started
		switch {
		case c.Running:
			running++
			cs.State.Running = &v1.ContainerStateRunning{StartedAt: metav1.NewTime(c.StartedAt)}
			if c.Terminated != nil {
				cs.LastTerminationState.Terminated = c.Terminated.DeepCopy()
			}
		case c.Restarting:
			stopped++
			cs.State.Waiting = &v1.ContainerStateWaiting{Reason: "CrashLoopBackOff", Message: c.WaitMessage}
			if c.Terminated != nil {
				cs.LastTerminationState.Terminated = c.Terminated.DeepCopy()
			}
		case c.Terminated != nil:
			stopped++
			if c.Terminated.ExitCode == 0 {
				succeeded++
			}
			cs.State.Terminated = c.Terminated.DeepCopy()
		default:
			waiting++
			reason := c.WaitReason
			if reason == "" {
				reason = "ContainerCreating"
			}
			cs.State.Waiting = &v1.ContainerStateWaiting{Reason: reason, Message: c.WaitMessage}
		}
		if !c.Ready {
			allReady = false
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}

	switch {
	case waiting > 0:
		st.Phase = v1.PodPending
	case running > 0:
		st.Phase = v1.PodRunning
	case stopped > 0:
		switch pod.Spec.RestartPolicy {
		case v1.RestartPolicyNever:
			if succeeded == stopped {
				st.Phase = v1.PodSucceeded
			} else {
				st.Phase = v1.PodFailed
			}
		case v1.RestartPolicyOnFailure:
			if succeeded == stopped {
				st.Phase = v1.PodSucceeded
			} else {
				st.Phase = v1.PodRunning
			}
		default:
			st.Phase = v1.PodRunning
		}
	default:
		st.Phase = v1.PodPending
	}

	cond := func(t v1.PodConditionType, ok bool, reason string) {
		s := v1.ConditionFalse
		if ok {
			s, reason = v1.ConditionTrue, ""
		}
		setCondition(&st, v1.PodCondition{Type: t, Status: s, Reason: reason}, now)
	}
	if getCondition(&st, v1.PodScheduled) == nil {
		cond(v1.PodScheduled, true, "")
	}
	cond(v1.PodReadyToStartContainers, view.SandboxReady, "")
	cond(v1.PodInitialized, true, "")
	cond(v1.ContainersReady, allReady, "ContainersNotReady")
	podReady := allReady && readinessGatesTrue(&st, pod)
	cond(v1.PodReady, podReady, "ContainersNotReady")
	if st.Phase == v1.PodSucceeded || st.Phase == v1.PodFailed {
		cond(v1.ContainersReady, false, "PodCompleted")
		cond(v1.PodReady, false, "PodCompleted")
	}
	return st
}

func readinessGatesTrue(st *v1.PodStatus, pod *v1.Pod) bool {
	for _, g := range pod.Spec.ReadinessGates {
		c := getCondition(st, g.ConditionType)
		if c == nil || c.Status != v1.ConditionTrue {
			return false
		}
	}
	return true
}

func getCondition(st *v1.PodStatus, t v1.PodConditionType) *v1.PodCondition {
	for i := range st.Conditions {
		if st.Conditions[i].Type == t {
			return &st.Conditions[i]
		}
	}
	return nil
}

// setCondition sets c, keeping the transition time when the status did
// not change.
func setCondition(st *v1.PodStatus, c v1.PodCondition, now time.Time) {
	if old := getCondition(st, c.Type); old != nil {
		if old.Status != c.Status {
			old.LastTransitionTime = metav1.NewTime(now)
		}
		old.Status, old.Reason, old.Message = c.Status, c.Reason, c.Message
		return
	}
	c.LastTransitionTime = metav1.NewTime(now)
	st.Conditions = append(st.Conditions, c)
}
