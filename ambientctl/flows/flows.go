// Package flows gathers identity-tagged flow records from every node's
// ztunnel (/debug/flows), filters them by namespace and identity (either end
// matching), orders them by time and prints them as a table or as JSON
// lines: each the ztunnel's own flow line with "node" (the reporting node)
// added first.
package flows

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/ambientmesh/ambient/ambientctl/output"
	"github.com/ambientmesh/ambient/ambientctl/ztunnels"
	"github.com/ambientmesh/ambient/internal/telemetry"
)

// Record is one flow and the node whose ztunnel reported it.
type Record struct {
	Node string
	Flow telemetry.Flow
	Line []byte // the ztunnel's JSON line
}

// Parse decodes a gathered line.
func Parse(l ztunnels.Line) (Record, error) {
	f, err := telemetry.ParseFlow(l.Data)
	if err != nil {
		return Record{}, fmt.Errorf("flow from node %s: %w", l.Node, err)
	}
	return Record{Node: l.Node, Flow: f, Line: l.Data}, nil
}

// Filter selects flows; empty fields select everything.
type Filter struct {
	Namespace string // source or destination namespace
	Identity  string // source or destination SPIFFE ID
}

// Match reports whether r passes f.
func (f Filter) Match(r Record) bool {
	if f.Namespace != "" && r.Flow.Src.Namespace != f.Namespace && r.Flow.Dst.Namespace != f.Namespace {
		return false
	}
	if f.Identity != "" && r.Flow.Src.Identity != f.Identity && r.Flow.Dst.Identity != f.Identity {
		return false
	}
	return true
}

// Sort orders records by start time, then node and reporter.
func Sort(rs []Record) {
	slices.SortStableFunc(rs, func(a, b Record) int {
		return cmp.Or(a.Flow.Start.Compare(b.Flow.Start), cmp.Compare(a.Node, b.Node), cmp.Compare(a.Flow.Reporter, b.Flow.Reporter))
	})
}

// Headers of the table.
var Headers = []string{"TIME", "REPORTER", "SRC WORKLOAD/IDENTITY", "DST WORKLOAD/IDENTITY", "DECISION", "POLICY", "BYTES ↑/↓", "DURATION"}

// Row renders one record as a table row.
func Row(r Record) []string {
	f := r.Flow
	decision := f.Decision
	if f.Error != "" && decision != telemetry.Deny {
		decision += " (error)"
	}
	return []string{
		f.Start.UTC().Format("15:04:05.000"),
		r.Node + "/" + reporterShort(f.Reporter),
		peer(f.Src, false), peer(f.Dst, true),
		decision, f.Policy,
		strconv.FormatInt(f.BytesSent, 10) + "/" + strconv.FormatInt(f.BytesRecv, 10),
		f.Duration.Round(100 * time.Microsecond).String(),
	}
}

func reporterShort(r string) string {
	switch r {
	case "source":
		return "src"
	case "destination":
		return "dst"
	}
	return r
}

// peer is "namespace/workload identity", falling back to the service or
// the address when a part is unknown.
func peer(p telemetry.Peer, dst bool) string {
	who := p.Addr
	if p.Workload != "" {
		who = p.Namespace + "/" + p.Workload
	} else if dst && p.Service != "" {
		who = p.Service
	}
	if who == "" {
		who = "unknown"
	}
	id := p.Identity
	if id == "" {
		id = "(no identity)"
	}
	return who + " " + id
}

// Table renders records.
func Table(rs []Record) output.Rows {
	t := output.Rows{Headers: Headers}
	for _, r := range rs {
		t.Rows = append(t.Rows, Row(r))
	}
	return t
}

// JSONLine is r's line with "node" added first.
func JSONLine(r Record) []byte {
	node, _ := json.Marshal(r.Node)
	line := r.Line
	if len(line) < 2 || line[0] != '{' {
		b, _ := r.Flow.MarshalJSON()
		line = b
	}
	out := append([]byte(`{"node":`), node...)
	if strings.TrimSpace(string(line[1:])) != "}" {
		out = append(out, ',')
	}
	out = append(out, line[1:]...)
	return append(out, '\n')
}

// Gather reads the recent flows of every target and returns those matching
// f, sorted by time, with an error per ztunnel that failed.
func Gather(ctx context.Context, d ztunnels.Dialer, targets []ztunnels.Target, f Filter) ([]Record, []error) {
	var mu sync.Mutex
	var out []Record
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = ztunnels.Flows(ctx, d, t, ztunnels.FlowsOptions{History: -1}, func(ls []ztunnels.Line) {
				mu.Lock()
				defer mu.Unlock()
				for _, l := range ls {
					if r, err := Parse(l); err == nil && f.Match(r) {
						out = append(out, r)
					}
				}
			}, nil)
		}()
	}
	wg.Wait()
	Sort(out)
	var failed []error
	for _, e := range errs {
		if e != nil {
			failed = append(failed, e)
		}
	}
	return out, failed
}

// event is what a node's follower reports: its recent records (once), or
// one live record.
type event struct {
	node    string
	history []ztunnels.Line
	live    *ztunnels.Line
	first   bool // history: the first report of this node (recent records, or none after a failure)
}

// Follow streams flows from every target to emit until ctx ends: first the
// recent records of all nodes merged by time (once every node has sent its
// own, or failed), then live ones in arrival order. warn is told about
// ztunnels that failed or whose stream ended; such a stream is re-opened
// (live records only) after a second.
func Follow(ctx context.Context, d ztunnels.Dialer, targets []ztunnels.Target, f Filter, emit func(Record), warn func(error)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	events := make(chan event, 1024)
	var wg sync.WaitGroup
	for _, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			followNode(ctx, d, t, events, warn)
		}()
	}
	defer wg.Wait() // after cancel: every follower ends
	waiting := len(targets)
	var pending []Record
	var held []Record // live records that came before every node's history
	match := func(l ztunnels.Line) (Record, bool) {
		r, err := Parse(l)
		if err != nil {
			warn(err)
			return r, false
		}
		return r, f.Match(r)
	}
	for waiting > 0 {
		select {
		case <-ctx.Done():
			return nil
		case e := <-events:
			if e.live != nil {
				if r, ok := match(*e.live); ok {
					held = append(held, r)
				}
				continue
			}
			if e.first {
				waiting--
			}
			for _, l := range e.history {
				if r, ok := match(l); ok {
					pending = append(pending, r)
				}
			}
		}
	}
	Sort(pending)
	for _, r := range append(pending, held...) {
		emit(r)
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case e := <-events:
			if e.live != nil {
				if r, ok := match(*e.live); ok {
					emit(r)
				}
			}
		}
	}
}

// followNode is one node's flow stream, named for stack dumps: it reports
// the node's recent records once (none if the first attempt fails), then
// live ones, reconnecting (live records only) while ctx lasts.
func followNode(ctx context.Context, d ztunnels.Dialer, t ztunnels.Target, events chan<- event, warn func(error)) {
	send := func(e event) {
		select {
		case events <- e:
		case <-ctx.Done():
		}
	}
	first := true
	failing := false // warn once per run of failures
	for {
		opts := ztunnels.FlowsOptions{Follow: true, History: -1}
		if !first {
			opts.History = 0
		}
		err := ztunnels.Flows(ctx, d, t, opts, func(ls []ztunnels.Line) {
			failing = false
			if first {
				first = false
				send(event{node: t.Node, history: ls, first: true})
			}
		}, func(l ztunnels.Line) { send(event{node: t.Node, live: &l}) })
		if ctx.Err() != nil {
			return
		}
		if first {
			first = false
			send(event{node: t.Node, first: true})
		}
		switch {
		case err == nil: // the ztunnel ended the stream: restarted, or cut us off as too slow
			warn(fmt.Errorf("ztunnel on node %s: flow stream ended, records may have been missed; reconnecting", t.Node))
		case !failing:
			warn(fmt.Errorf("%w; reconnecting", err))
			failing = true
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// WriteJSON writes r as a JSON line.
func WriteJSON(w io.Writer, r Record) error {
	_, err := w.Write(JSONLine(r))
	return err
}
