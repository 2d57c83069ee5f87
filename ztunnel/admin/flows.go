package admin

import (
	"net/http"
	"strconv"
	"time"

	"github.com/ambientmesh/ambient/internal/telemetry"
)

// FlowHistoryHeader, on a /debug/flows response, is how many of its first
// lines are recent records; any later ones are live.
const FlowHistoryHeader = "Flow-History-Lines"

// MaxFlowFollowers bounds the concurrent ?follow=1 streams; more are
// refused with 503.
const MaxFlowFollowers = 32

// flowWriteTimeout bounds each write of the flow stream; a reader that
// takes longer is gone or too slow.
const flowWriteTimeout = 10 * time.Second

// FlowsHandler serves GET /debug/flows from feed: the recent flow records
// as JSON lines (Content-Type application/x-ndjson), oldest first, each line
// exactly as the flow log writes it. With follow=1 the response then stays
// open and carries every later record as it is written, until the client
// goes away, stop is closed, or the reader falls so far behind that the feed
// cuts it off (the response just ends). history=N limits the recent records
// to the last N (history=0: live ones only). The FlowHistoryHeader says how
// many recent records come first. At most MaxFlowFollowers streams follow
// at once.
func FlowsHandler(feed *telemetry.Feed, stop <-chan struct{}) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		follow, _ := strconv.ParseBool(q.Get("follow"))
		limit := -1
		if h := q.Get("history"); h != "" {
			n, err := strconv.Atoi(h)
			if err != nil || n < 0 {
				http.Error(w, "admin: history must be a non-negative integer", http.StatusBadRequest)
				return
			}
			limit = n
		}
		var history [][]byte
		var sub *telemetry.Subscription
		if follow {
			if feed.Subscribers() >= MaxFlowFollowers {
				http.Error(w, "admin: too many flow followers; try again later", http.StatusServiceUnavailable)
				return
			}
			sub = feed.Subscribe(0)
			defer sub.Close()
			history = sub.History
		} else {
			history = feed.History()
		}
		if limit >= 0 && len(history) > limit {
			history = history[len(history)-limit:]
		}
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set(FlowHistoryHeader, strconv.Itoa(len(history)))
		w.Header().Set("Cache-Control", "no-store")
		rc := http.NewResponseController(w)
		write := func(line []byte) error {
			rc.SetWriteDeadline(time.Now().Add(flowWriteTimeout))
			if _, err := w.Write(line); err != nil {
				return err
			}
			_, err := w.Write([]byte{'\n'})
			return err
		}
		for _, line := range history {
			if write(line) != nil {
				return
			}
		}
		rc.SetWriteDeadline(time.Now().Add(flowWriteTimeout))
		if rc.Flush() != nil || sub == nil {
			return
		}
		streamFlows(r, sub, stop, write, rc)
	})
}

// streamFlows is a /debug/flows follower's loop, named for stack dumps: it
// writes what the subscription delivers, flushing when it has caught up.
func streamFlows(r *http.Request, sub *telemetry.Subscription, stop <-chan struct{}, write func([]byte) error, rc *http.ResponseController) {
	for {
		select {
		case <-r.Context().Done():
			return
		case <-stop:
			return
		case line, ok := <-sub.C:
			if !ok {
				return
			}
			if write(line) != nil {
				return
			}
		drain:
			for {
				select {
				case line, ok := <-sub.C:
					if !ok {
						rc.Flush()
						return
					}
					if write(line) != nil {
						return
					}
				default:
					break drain
				}
			}
			rc.SetWriteDeadline(time.Now().Add(flowWriteTimeout))
			if rc.Flush() != nil {
				return
			}
		}
	}
}
