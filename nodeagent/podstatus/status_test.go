package podstatus

import (
	"testing"
	"time"

	v1 "k8s.io/api/core/v1"
)

func TestCompute_PhasesAndConditions(t *testing.T) {
	now := time.Unix(1000, 0)
	pod := &v1.Pod{Spec: v1.PodSpec{RestartPolicy: v1.RestartPolicyAlways}}
	term := &v1.ContainerStateTerminated{ExitCode: 137}
	tests := []struct {
		name      string
		policy    v1.RestartPolicy
		ctrs      []Container
		phase     v1.PodPhase
		ready     bool
		waitWhy   string
		restarted bool
	}{
		{name: "creating", ctrs: []Container{{Name: "a"}}, phase: v1.PodPending, waitWhy: "ContainerCreating"},
		{name: "image missing", ctrs: []Container{{Name: "a", WaitReason: "ErrImagePull", WaitMessage: "m"}}, phase: v1.PodPending, waitWhy: "ErrImagePull"},
		{name: "running not ready", ctrs: []Container{{Name: "a", Running: true}}, phase: v1.PodRunning},
		{name: "running ready", ctrs: []Container{{Name: "a", Running: true, Ready: true}}, phase: v1.PodRunning, ready: true},
		{name: "crash loop", ctrs: []Container{{Name: "a", Restarting: true, Terminated: term, RestartCount: 2}}, phase: v1.PodRunning, waitWhy: "CrashLoopBackOff", restarted: true},
		{name: "never, failed", policy: v1.RestartPolicyNever, ctrs: []Container{{Name: "a", Terminated: term}}, phase: v1.PodFailed},
		{name: "onfailure, done", policy: v1.RestartPolicyOnFailure, ctrs: []Container{{Name: "a", Terminated: &v1.ContainerStateTerminated{}}}, phase: v1.PodSucceeded},
		{name: "one of two waiting", ctrs: []Container{{Name: "a", Running: true, Ready: true}, {Name: "b"}}, phase: v1.PodPending},
	}
	for _, tc := range tests {
		p := pod.DeepCopy()
		if tc.policy != "" {
			p.Spec.RestartPolicy = tc.policy
		}
		old := v1.PodStatus{QOSClass: v1.PodQOSBestEffort, Conditions: []v1.PodCondition{{Type: v1.PodScheduled, Status: v1.ConditionTrue}}}
		st := Compute(old, p, View{HostIP: "172.30.0.1", PodIPs: []string{"10.244.1.2"}, SandboxReady: true, Containers: tc.ctrs}, now)
		if st.Phase != tc.phase {
			t.Errorf("%s: phase %s, want %s", tc.name, st.Phase, tc.phase)
		}
		if st.QOSClass != v1.PodQOSBestEffort || st.PodIP != "10.244.1.2" || st.HostIP != "172.30.0.1" {
			t.Errorf("%s: status %+v", tc.name, st)
		}
		ready := getCondition(&st, v1.PodReady)
		if ready == nil || (ready.Status == v1.ConditionTrue) != tc.ready {
			t.Errorf("%s: Ready condition %+v, want %v", tc.name, ready, tc.ready)
		}
		for _, ct := range []v1.PodConditionType{v1.PodScheduled, v1.PodInitialized, v1.ContainersReady, v1.PodReadyToStartContainers} {
			if getCondition(&st, ct) == nil {
				t.Errorf("%s: no %s condition", tc.name, ct)
			}
		}
		cs := st.ContainerStatuses[len(st.ContainerStatuses)-1]
		if tc.waitWhy != "" && (cs.State.Waiting == nil || cs.State.Waiting.Reason != tc.waitWhy) {
			t.Errorf("%s: state %+v, want waiting %s", tc.name, cs.State, tc.waitWhy)
		}
		if tc.restarted && (cs.LastTerminationState.Terminated == nil || cs.RestartCount != 2) {
			t.Errorf("%s: %+v", tc.name, cs)
		}
	}
}

func TestCompute_TransitionTimeMovesOnlyOnChange(t *testing.T) {
	pod := &v1.Pod{}
	t1, t2, t3 := time.Unix(1000, 0), time.Unix(2000, 0), time.Unix(3000, 0)
	running := View{SandboxReady: true, Containers: []Container{{Name: "a", Running: true, Ready: true}}}
	st := Compute(v1.PodStatus{}, pod, running, t1)
	st = Compute(st, pod, running, t2)
	if got := getCondition(&st, v1.PodReady).LastTransitionTime.Time; !got.Equal(t1) {
		t.Errorf("unchanged Ready moved to %v", got)
	}
	running.Containers[0].Ready = false
	st = Compute(st, pod, running, t3)
	if c := getCondition(&st, v1.PodReady); c.Status != v1.ConditionFalse || !c.LastTransitionTime.Time.Equal(t3) {
		t.Errorf("Ready after a change: %+v", c)
	}
}
