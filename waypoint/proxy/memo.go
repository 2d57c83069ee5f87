package proxy

import (
	"strings"
	"sync"

	"github.com/ambientmesh/ambient/internal/state"
	"github.com/ambientmesh/ambient/internal/telemetry"
	"github.com/ambientmesh/ambient/proto/workloadapi"
)

// What requests derive again and again from the same inputs is derived
// once and kept here, so that a request allocates only what is its own:
//
//   - per mesh view (viewMemo): service keys, services by key, workload
//     identities;
//   - per tunnel (tunnelInfo): the client's and the destination's
//     addresses as strings, the source peer per view;
//   - per cluster endpoint set (epSet, resilience.go): each endpoint's
//     peer, as the flow record and metrics name it.
//
// Each memo is bounded by what it derives from (a view's services and
// workloads, a tunnel, an endpoint set) and goes with it. And what a
// request needs for itself only is reused by the next once nothing can
// read it any more: its reqRecord (http.go, with the parts of its
// upstream requests) and its buffered body (bodyBufs; see reuseAfter).

// viewMemo memoizes, for one mesh view, what requests look up in it,
// filled on first use. A view is immutable, so its entries never go
// stale; Proxy.memo holds the current view's.
type viewMemo struct {
	view *state.View

	mu       sync.RWMutex                     // guards the maps
	svcKeys  map[*workloadapi.Service]string  // state.ServiceKey
	services map[string]*workloadapi.Service  // view.Service by key; nil: none
	ids      map[*workloadapi.Workload]string // the workload's SPIFFE ID; "": none
}

// maxMemoEntries bounds each map of a viewMemo: beyond, lookups are not
// memoized (a view with more services or workloads than that).
const maxMemoEntries = 8192

func newViewMemo(view *state.View) *viewMemo {
	return &viewMemo{view: view, svcKeys: map[*workloadapi.Service]string{},
		services: map[string]*workloadapi.Service{}, ids: map[*workloadapi.Workload]string{}}
}

// memoFor returns the memo of view: the current one, or a fresh one when
// view is the store's current view (a request that began under an older
// view gets a memo of its own, not kept).
func (p *Proxy) memoFor(view *state.View) *viewMemo {
	if m := p.memo.Load(); m != nil && m.view == view {
		return m
	}
	m := newViewMemo(view)
	if view == p.cfg.Store.Current() {
		p.memo.Store(m)
	}
	return m
}

// serviceKey is state.ServiceKey(svc).
func (m *viewMemo) serviceKey(svc *workloadapi.Service) string {
	m.mu.RLock()
	k, ok := m.svcKeys[svc]
	m.mu.RUnlock()
	if ok {
		return k
	}
	k = state.ServiceKey(svc)
	m.mu.Lock()
	if len(m.svcKeys) < maxMemoEntries {
		m.svcKeys[svc] = k
	}
	m.mu.Unlock()
	return k
}

// service is the view's service with key svcKey ("namespace/hostname"),
// or nil.
func (m *viewMemo) service(svcKey string) *workloadapi.Service {
	m.mu.RLock()
	svc, ok := m.services[svcKey]
	m.mu.RUnlock()
	if ok {
		return svc
	}
	ns, host, _ := strings.Cut(svcKey, "/")
	svc = m.view.Service(ns, host)
	m.mu.Lock()
	if len(m.services) < maxMemoEntries {
		m.services[svcKey] = svc
	}
	m.mu.Unlock()
	return svc
}

// identity is the SPIFFE ID of w as a string, "" when it has none.
func (m *viewMemo) identity(w *workloadapi.Workload) string {
	m.mu.RLock()
	id, ok := m.ids[w]
	m.mu.RUnlock()
	if ok {
		return id
	}
	s := workloadIDString(w)
	m.mu.Lock()
	if len(m.ids) < maxMemoEntries {
		m.ids[w] = s
	}
	m.mu.Unlock()
	return s
}

// workloadIDString is the SPIFFE ID of w, "" when it has none.
func workloadIDString(w *workloadapi.Workload) string {
	if id, err := workloadID(w); err == nil {
		return id.String()
	}
	return ""
}

// endpointPeer describes endpoint workload w at addr, whose identity is id.
func endpointPeer(w *workloadapi.Workload, addr, id string) telemetry.Peer {
	return telemetry.Peer{Workload: w.GetName(), Namespace: w.GetNamespace(),
		App: w.GetCanonicalName(), Version: w.GetCanonicalRevision(), Addr: addr, Identity: id}
}

// srcMemo is a tunnel's source peer in one view.
type srcMemo struct {
	view *state.View
	peer telemetry.Peer
}

// plainPath reports whether url.Parse(path) is &url.URL{Path: path}: an
// absolute path, not "//" (an authority), of bytes that are neither
// escaped nor special (query, fragment, percent-encoding) in a URL path.
// Such a path needs no parsing.
func plainPath(path string) bool {
	if len(path) == 0 || path[0] != '/' || len(path) > 1 && path[1] == '/' {
		return false
	}
	for i := 1; i < len(path); i++ {
		if !pathByte[path[i]] {
			return false
		}
	}
	return true
}

// pathByte holds the bytes url.URL keeps as they are in a path
// (shouldEscape false for encodePath) other than '%'.
var pathByte = func() (t [256]bool) {
	for c := 'a'; c <= 'z'; c++ {
		t[c] = true
	}
	for c := 'A'; c <= 'Z'; c++ {
		t[c] = true
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for _, c := range "-._~$&+,/:;=@" {
		t[c] = true
	}
	return t
}()

// bodyBufs are buffers for request bodies held for retries and mirrors
// (MaxRetryBody), reused when nothing can read them any more; at most
// maxPooledBody bytes each.
var bodyBufs sync.Pool // *[]byte

const maxPooledBody = 64 << 10

// getBodyBuf returns a buffer of n bytes, pooled when n allows, and its
// pool entry (nil: not pooled).
func getBodyBuf(n int64) ([]byte, *[]byte) {
	if n > maxPooledBody {
		return make([]byte, n), nil
	}
	bp, _ := bodyBufs.Get().(*[]byte)
	if bp == nil || int64(cap(*bp)) < n {
		b := make([]byte, n, max(n, 4<<10))
		return b, &b
	}
	return (*bp)[:n], bp
}

func putBodyBuf(bp *[]byte) {
	if bp != nil {
		bodyBufs.Put(bp)
	}
}

// peerAddrString is info.peerAddr.String(), derived once per tunnel.
func (info *tunnelInfo) peerAddrString() string {
	if info.peerAddrStr == "" {
		return info.peerAddr.String()
	}
	return info.peerAddrStr
}

// authorityString is info.authority.String(), derived once per tunnel.
func (info *tunnelInfo) authorityString() string {
	if info.authorityStr == "" {
		return info.authority.String()
	}
	return info.authorityStr
}
