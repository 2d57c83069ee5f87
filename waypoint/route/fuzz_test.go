package route

import (
	"math"
	"net/http"
	"strings"
	"testing"

	pb "github.com/ambientmesh/ambient/proto/waypointapi"
)

// FuzzSelect: no request makes Select panic, and what it returns is
// consistent (a Forward has a backend; a prefix rewrite yields an absolute
// path).
func FuzzSelect(f *testing.F) {
	for _, s := range []struct{ path, query, host, hdr string }{
		{"/", "", "reviews", ""},
		{"/foo/bar", "a=1&b=%zz", "foo.example.com:80", "beta"},
		{"", "&&=&", "[::1]", "\x00"},
		{"/foo", "q=+%20", ":", "a,b"},
		{"foo", "%", "[", "beta"},
	} {
		f.Add(s.path, s.query, s.host, s.hdr, uint64(0))
	}
	rewrite := to(be("v1", 1))
	rewrite.Filters = []*pb.Filter{{Kind: &pb.Filter_UrlRewrite{UrlRewrite: &pb.URLRewrite{Path: replPrefix("/x/")}}}}
	rd := redirectRule(&pb.Redirect{Path: replPrefix("")})
	hosts := to(be("h", 1), &pb.Backend{Weight: 1, InvalidStatus: 500})
	hosts.Hostnames = []string{"*.example.com", "foo.example.com"}
	tables := []*Table{
		plainTable(f),
		table(f,
			entry{&pb.RouteMatch{Path: prefix("/foo")}, rewrite},
			entry{&pb.RouteMatch{Path: prefix("/r")}, rd},
			entry{&pb.RouteMatch{Path: regex(`.*\.png`)}, hosts},
			entry{&pb.RouteMatch{QueryParams: []*pb.QueryParamMatch{qp("a", "1")}}, hosts},
		),
	}
	f.Fuzz(func(t *testing.T, path, query, host, hv string, x uint64) {
		req := &RequestView{Method: "GET", Path: path, RawQuery: query, Host: host, Header: http.Header{"X-User": {hv}}}
		for _, tb := range tables {
			d := tb.Select(req, func() uint64 { x = x*6364136223846793005 + 1442695040888963407; return x })
			switch d.Action {
			case Forward:
				if d.Backend == nil {
					t.Fatalf("forward without backend: %+v", d)
				}
				if d.Path != "" && !strings.HasPrefix(d.Path, "/") {
					t.Fatalf("rewrite %q of %q is not absolute", d.Path, path)
				}
			case Redirect:
				if d.Location == "" || d.Status == 0 {
					t.Fatalf("redirect %+v", d)
				}
			case NotFound, Fail:
				if d.Status == 0 || d.Status > math.MaxInt16 {
					t.Fatalf("status %+v", d)
				}
			default:
				t.Fatalf("unknown action %v", d.Action)
			}
		}
	})
}
