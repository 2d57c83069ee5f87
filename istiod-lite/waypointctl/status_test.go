package waypointctl

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

var (
	t0 = metav1.NewTime(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	t1 = metav1.NewTime(t0.Add(time.Minute))
)

func service(ips ...string) *corev1.Service {
	s := &corev1.Service{Spec: corev1.ServiceSpec{ClusterIPs: ips}}
	if len(ips) > 0 {
		s.Spec.ClusterIP = ips[0]
	}
	return s
}

func deployment(available int32, conds ...appsv1.DeploymentCondition) *appsv1.Deployment {
	return &appsv1.Deployment{Status: appsv1.DeploymentStatus{Replicas: 1, ReadyReplicas: available, AvailableReplicas: available, Conditions: conds}}
}

func addrs(ipsThenHost ...string) []gatewayv1.GatewayStatusAddress {
	var out []gatewayv1.GatewayStatusAddress
	for i, v := range ipsThenHost {
		typ := gatewayv1.IPAddressType
		if i == len(ipsThenHost)-1 {
			typ = gatewayv1.HostnameAddressType
		}
		out = append(out, gatewayv1.GatewayStatusAddress{Type: &typ, Value: v})
	}
	return out
}

// short is a condition without the bookkeeping fields.
type short struct {
	Status         metav1.ConditionStatus
	Reason, Prefix string // Prefix: the message starts with it
}

func TestGatewayStatus_AddressesAndConditions(t *testing.T) {
	const host = "waypoint.shop.svc.cluster.local"
	for _, tc := range []struct {
		name                 string
		gw                   *gatewayv1.Gateway
		obs                  Observed
		wantAddrs            []gatewayv1.GatewayStatusAddress
		accepted, programmed short
		listeners            map[gatewayv1.SectionName][2]short // Accepted, Programmed
	}{{
		name:       "no HBONE listener: not accepted, not deployed",
		gw:         gateway("waypoint", gatewayv1.Listener{Name: "http", Port: 80, Protocol: "HTTP"}),
		accepted:   short{"False", "ListenersNotValid", `a waypoint Gateway needs a listener on port 15008 with protocol "HBONE"`},
		programmed: short{"False", "Invalid", "Not deployed"},
		listeners: map[gatewayv1.SectionName][2]short{"http": {
			{"False", "UnsupportedProtocol", `Expected a single listener on port 15008 with protocol "HBONE"`},
			{"False", "Invalid", ""},
		}},
	}, {
		name:       "invalid name: not accepted",
		gw:         gateway("1waypoint", meshListener),
		accepted:   short{"False", "Invalid", "a waypoint Gateway's name must be a DNS-1035 label"},
		programmed: short{"False", "Invalid", ""},
		listeners:  map[gatewayv1.SectionName][2]short{"mesh": {{"False", "UnsupportedProtocol", "The Gateway is not accepted"}, {"False", "Invalid", ""}}},
	}, {
		name:       "accepted, no Service yet: no address",
		gw:         gateway("waypoint", meshListener),
		accepted:   short{"True", "Accepted", "Resource accepted"},
		programmed: short{"False", "AddressNotAssigned", "Waiting for Service shop/waypoint"},
		listeners:  map[gatewayv1.SectionName][2]short{"mesh": {{"True", "Accepted", ""}, {"False", "Pending", "Waiting for Service"}}},
	}, {
		name:       "Service without Deployment: addresses, pending",
		gw:         gateway("waypoint", meshListener),
		obs:        Observed{Service: service("10.96.0.20")},
		wantAddrs:  addrs("10.96.0.20", host),
		accepted:   short{"True", "Accepted", ""},
		programmed: short{"False", "Pending", "Waiting for Deployment shop/waypoint"},
	}, {
		name:       "no available replica: pending with the Deployment's failure",
		gw:         gateway("waypoint", meshListener),
		obs:        Observed{Service: service("10.96.0.20"), Deployment: deployment(0, appsv1.DeploymentCondition{Type: appsv1.DeploymentReplicaFailure, Status: "True", Message: `pods "waypoint-1" is forbidden: quota`})},
		wantAddrs:  addrs("10.96.0.20", host),
		accepted:   short{"True", "Accepted", ""},
		programmed: short{"False", "Pending", "Deployment shop/waypoint has no available replica yet (0 of 1 ready): pods"},
	}, {
		name:       "available replica: programmed",
		gw:         gateway("waypoint", meshListener),
		obs:        Observed{Service: service("10.96.0.20"), Deployment: deployment(1)},
		wantAddrs:  addrs("10.96.0.20", host),
		accepted:   short{"True", "Accepted", ""},
		programmed: short{"True", "Programmed", "Resource programmed, assigned to service(s) waypoint.shop.svc.cluster.local:15008"},
		listeners:  map[gatewayv1.SectionName][2]short{"mesh": {{"True", "Accepted", ""}, {"True", "Programmed", "Resource programmed"}}},
	}, {
		name:       "dual stack: both ClusterIPs",
		gw:         gateway("waypoint", meshListener),
		obs:        Observed{Service: service("10.96.0.20", "fd00::20"), Deployment: deployment(1)},
		wantAddrs:  addrs("10.96.0.20", "fd00::20", host),
		accepted:   short{"True", "Accepted", ""},
		programmed: short{"True", "Programmed", ""},
	}, {
		name:       "apply failed: not programmed, says why",
		gw:         gateway("waypoint", meshListener),
		obs:        Observed{Service: service("10.96.0.20"), Deployment: deployment(1), ApplyErr: errors.New("apply Deployment: field is immutable")},
		wantAddrs:  addrs("10.96.0.20", host),
		accepted:   short{"True", "Accepted", ""},
		programmed: short{"False", "Invalid", "Deploying the waypoint failed (retrying): apply Deployment: field is immutable"},
	}, {
		name:       "extra listener: rejected alone, the Gateway accepted",
		gw:         gateway("waypoint", meshListener, gatewayv1.Listener{Name: "http", Port: 8080, Protocol: "HTTP"}),
		obs:        Observed{Service: service("10.96.0.20"), Deployment: deployment(1)},
		wantAddrs:  addrs("10.96.0.20", host),
		accepted:   short{"True", "Accepted", ""},
		programmed: short{"True", "Programmed", ""},
		listeners: map[gatewayv1.SectionName][2]short{
			"mesh": {{"True", "Accepted", ""}, {"True", "Programmed", ""}},
			"http": {{"False", "UnsupportedProtocol", "Expected a single listener"}, {"False", "Invalid", ""}},
		},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			st := GatewayStatus(tc.gw, Check(tc.gw), tc.obs, "", t0)
			if diff := cmp.Diff(tc.wantAddrs, st.Addresses); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
			checkCond(t, "Gateway Accepted", st.Conditions, "Accepted", tc.accepted)
			checkCond(t, "Gateway Programmed", st.Conditions, "Programmed", tc.programmed)
			if len(st.Listeners) != len(tc.gw.Spec.Listeners) {
				t.Errorf("%d listener statuses for %d listeners", len(st.Listeners), len(tc.gw.Spec.Listeners))
			}
			for _, ls := range st.Listeners {
				want, ok := tc.listeners[ls.Name]
				if !ok {
					continue
				}
				checkCond(t, "listener "+string(ls.Name)+" Accepted", ls.Conditions, "Accepted", want[0])
				checkCond(t, "listener "+string(ls.Name)+" Programmed", ls.Conditions, "Programmed", want[1])
				checkCond(t, "listener "+string(ls.Name)+" Conflicted", ls.Conditions, "Conflicted", short{"False", "NoConflicts", ""})
			}
			for _, conds := range append([][]metav1.Condition{st.Conditions}, listenerConds(st)...) {
				for _, c := range conds {
					if c.ObservedGeneration != 3 || !c.LastTransitionTime.Equal(&t0) {
						t.Errorf("condition %s: observedGeneration %d, lastTransitionTime %v; want 3, %v", c.Type, c.ObservedGeneration, c.LastTransitionTime, t0)
					}
				}
			}
		})
	}
}

func listenerConds(st gatewayv1.GatewayStatus) [][]metav1.Condition {
	var out [][]metav1.Condition
	for _, l := range st.Listeners {
		out = append(out, l.Conditions)
	}
	return out
}

func checkCond(t *testing.T, what string, conds []metav1.Condition, typ string, want short) {
	t.Helper()
	c := apimeta.FindStatusCondition(conds, typ)
	if c == nil {
		t.Errorf("%s: no condition %s in %v", what, typ, conds)
		return
	}
	if c.Status != want.Status || c.Reason != want.Reason || !strings.HasPrefix(c.Message, want.Prefix) {
		t.Errorf("%s = %s/%s %q, want %s/%s %q...", what, c.Status, c.Reason, c.Message, want.Status, want.Reason, want.Prefix)
	}
}

func TestGatewayStatus_TransitionTimeKeptUntilStatusChanges(t *testing.T) {
	gw := gateway("waypoint", meshListener)
	obs := Observed{Service: service("10.96.0.20")}
	gw.Status = GatewayStatus(gw, nil, obs, "", t0)

	// Same statuses, new generation: times kept, generation updated.
	gw.Generation = 4
	st := GatewayStatus(gw, nil, obs, "", t1)
	for _, typ := range []string{"Accepted", "Programmed"} {
		c := apimeta.FindStatusCondition(st.Conditions, typ)
		if !c.LastTransitionTime.Equal(&t0) || c.ObservedGeneration != 4 {
			t.Errorf("%s: lastTransitionTime %v generation %d, want %v and 4", typ, c.LastTransitionTime, c.ObservedGeneration, t0)
		}
	}
	gw.Status = st

	// Programmed flips: only it gets the new time.
	st = GatewayStatus(gw, nil, Observed{Service: service("10.96.0.20"), Deployment: deployment(1)}, "", t1)
	if c := apimeta.FindStatusCondition(st.Conditions, "Programmed"); c.Status != "True" || !c.LastTransitionTime.Equal(&t1) {
		t.Errorf("Programmed %s at %v, want True at %v", c.Status, c.LastTransitionTime, t1)
	}
	if c := apimeta.FindStatusCondition(st.Conditions, "Accepted"); !c.LastTransitionTime.Equal(&t0) {
		t.Errorf("Accepted moved to %v", c.LastTransitionTime)
	}
	if c := apimeta.FindStatusCondition(st.Listeners[0].Conditions, "Programmed"); c.Status != "True" || !c.LastTransitionTime.Equal(&t1) {
		t.Errorf("listener Programmed %s at %v, want True at %v", c.Status, c.LastTransitionTime, t1)
	}
}

func TestGatewayStatus_ClusterDomain(t *testing.T) {
	st := GatewayStatus(gateway("waypoint", meshListener), nil, Observed{Service: service("10.96.0.20")}, "corp.example", t0)
	if got := st.Addresses[len(st.Addresses)-1].Value; got != "waypoint.shop.svc.corp.example" {
		t.Errorf("hostname = %q", got)
	}
}

func TestClassConditions_AcceptedKeepsTime(t *testing.T) {
	gc := &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: GatewayClass, Generation: 2}}
	conds := ClassConditions(gc, t0)
	checkCond(t, "class Accepted", conds, "Accepted", short{"True", "Accepted", "Handled by istiod-lite"})
	gc.Status.Conditions = conds
	again := ClassConditions(gc, t1)
	if !cmp.Equal(conds, again) {
		t.Errorf("unchanged class got new conditions: %v, was %v", again, conds)
	}
}

func TestClassDescription_FitsTheCRD(t *testing.T) {
	if len(ClassDescription) > 64 {
		t.Errorf("ClassDescription is %d bytes; GatewayClass spec.description allows 64", len(ClassDescription))
	}
}
