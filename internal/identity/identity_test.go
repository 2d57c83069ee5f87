package identity_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/ambientmesh/ambient/internal/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var td = spiffeid.RequireTrustDomainFromString(identity.DefaultTrustDomain)

func TestForWorkload(t *testing.T) {
	tests := []struct {
		name    string
		td      spiffeid.TrustDomain
		ns, sa  string
		want    string
		wantErr error
	}{
		{"simple", td, "default", "bookinfo-productpage", "spiffe://cluster.local/ns/default/sa/bookinfo-productpage", nil},
		{"service account with dots", td, "istio-system", "ztunnel.v1", "spiffe://cluster.local/ns/istio-system/sa/ztunnel.v1", nil},
		{"63-char namespace", td, strings.Repeat("a", 63), "sa", "spiffe://cluster.local/ns/" + strings.Repeat("a", 63) + "/sa/sa", nil},
		{"empty trust domain", spiffeid.TrustDomain{}, "default", "sa", "", identity.ErrInvalidTrustDomain},
		{"empty namespace", td, "", "sa", "", identity.ErrInvalidNamespace},
		{"upper-case namespace", td, "Default", "sa", "", identity.ErrInvalidNamespace},
		{"namespace with a dot", td, "a.b", "sa", "", identity.ErrInvalidNamespace},
		{"namespace ending in a dash", td, "ns-", "sa", "", identity.ErrInvalidNamespace},
		{"64-char namespace", td, strings.Repeat("a", 64), "sa", "", identity.ErrInvalidNamespace},
		{"namespace with a slash", td, "a/b", "sa", "", identity.ErrInvalidNamespace},
		{"empty service account", td, "default", "", "", identity.ErrInvalidServiceAccount},
		{"service account with underscore", td, "default", "my_sa", "", identity.ErrInvalidServiceAccount},
		{"service account with empty label", td, "default", "a..b", "", identity.ErrInvalidServiceAccount},
		{"254-char service account", td, "default", strings.Repeat("a.", 126) + "aa", "", identity.ErrInvalidServiceAccount},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := identity.ForWorkload(tt.td, tt.ns, tt.sa)
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("ForWorkload error = %v, want %v", err, tt.wantErr)
			}
			if err == nil && id.String() != tt.want {
				t.Errorf("ForWorkload = %s, want %s", id, tt.want)
			}
			if err != nil && !id.IsZero() {
				t.Errorf("ForWorkload returned %s with an error", id)
			}
		})
	}
}

func TestParseWorkload(t *testing.T) {
	tests := []struct {
		id      string
		want    identity.Workload
		wantErr []error
	}{
		{"spiffe://cluster.local/ns/default/sa/client", identity.Workload{TrustDomain: td, Namespace: "default", ServiceAccount: "client"}, nil},
		{"spiffe://example.org/ns/kube-system/sa/a.b", identity.Workload{TrustDomain: spiffeid.RequireTrustDomainFromString("example.org"), Namespace: "kube-system", ServiceAccount: "a.b"}, nil},
		{"spiffe://cluster.local", identity.Workload{}, []error{identity.ErrNotWorkloadID}},
		{"spiffe://cluster.local/ns/default", identity.Workload{}, []error{identity.ErrNotWorkloadID}},
		{"spiffe://cluster.local/ns/default/sa/client/extra", identity.Workload{}, []error{identity.ErrNotWorkloadID}},
		{"spiffe://cluster.local/sa/client/ns/default", identity.Workload{}, []error{identity.ErrNotWorkloadID}},
		{"spiffe://cluster.local/namespace/default/sa/client", identity.Workload{}, []error{identity.ErrNotWorkloadID}},
		{"spiffe://cluster.local/ns/Default/sa/client", identity.Workload{}, []error{identity.ErrNotWorkloadID, identity.ErrInvalidNamespace}},
		{"spiffe://cluster.local/ns/default/sa/my_sa", identity.Workload{}, []error{identity.ErrNotWorkloadID, identity.ErrInvalidServiceAccount}},
	}
	for _, tt := range tests {
		t.Run(tt.id, func(t *testing.T) {
			got, err := identity.ParseWorkload(spiffeid.RequireFromString(tt.id))
			for _, want := range tt.wantErr {
				if !errors.Is(err, want) {
					t.Errorf("ParseWorkload error = %v, want it to wrap %v", err, want)
				}
			}
			if tt.wantErr == nil && err != nil {
				t.Fatalf("ParseWorkload error = %v", err)
			}
			if got != tt.want {
				t.Errorf("ParseWorkload = %+v, want %+v", got, tt.want)
			}
			if err == nil && got.ID().String() != tt.id {
				t.Errorf("round trip: ID() = %s, want %s", got.ID(), tt.id)
			}
		})
	}
	if _, err := identity.ParseWorkload(spiffeid.ID{}); !errors.Is(err, identity.ErrNotWorkloadID) {
		t.Errorf("ParseWorkload(zero) error = %v, want ErrNotWorkloadID", err)
	}
}

func TestParseWorkloadString(t *testing.T) {
	if w, err := identity.ParseWorkloadString("spiffe://cluster.local/ns/a/sa/b"); err != nil || w.String() != "spiffe://cluster.local/ns/a/sa/b" {
		t.Errorf("ParseWorkloadString = %v, %v", w, err)
	}
	if _, err := identity.ParseWorkloadString("https://cluster.local/ns/a/sa/b"); !errors.Is(err, identity.ErrNotWorkloadID) {
		t.Errorf("non-SPIFFE string: error = %v, want ErrNotWorkloadID", err)
	}
}

func TestWorkload_IDOfInvalidWorkloadIsZero(t *testing.T) {
	if id := (identity.Workload{TrustDomain: td, Namespace: "UPPER", ServiceAccount: "x"}).ID(); !id.IsZero() {
		t.Errorf("ID() = %s, want zero", id)
	}
}
