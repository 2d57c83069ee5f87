package waypointapi

import (
	"strings"
	"testing"
)

// TestResourceName: the four shapes of a table's name, built alike by
// ResourceName and AppendResourceName (after what b already holds).
func TestResourceName(t *testing.T) {
	long := strings.Repeat("k", 200)
	for _, tc := range []struct {
		key  string
		port uint32
		ns   string
		want string
	}{
		{"shop/reviews.shop.svc.cluster.local", 0, "", "shop/reviews.shop.svc.cluster.local"},
		{"gw/waypoint", 80, "", "gw/waypoint:80"},
		{"gw/waypoint", 0, "shop", "gw/waypoint@shop"},
		{"shop/r", 1<<32 - 1, "a@b", "shop/r:4294967295@a@b"},
		{long, 65535, "shop", long + ":65535@shop"},
		{"", 1, "", ":1"},
	} {
		if got := ResourceName(tc.key, tc.port, tc.ns); got != tc.want {
			t.Errorf("ResourceName(%q, %d, %q) = %q, want %q", tc.key, tc.port, tc.ns, got, tc.want)
		}
		if got := string(AppendResourceName([]byte("x"), tc.key, tc.port, tc.ns)); got != "x"+tc.want {
			t.Errorf("AppendResourceName(x, %q, %d, %q) = %q, want %q", tc.key, tc.port, tc.ns, got, "x"+tc.want)
		}
	}
}
