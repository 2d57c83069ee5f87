package ztunnels

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"time"

	"github.com/ambientmesh/ambient/ztunnel/admin"
)

// requestTimeout bounds a non-streaming admin request.
const requestTimeout = 15 * time.Second

// maxLine bounds one flow line.
const maxLine = 1 << 20

// httpClient talks HTTP to t's admin port over d.
func httpClient(d Dialer, t Target) *http.Client {
	return &http.Client{Transport: &http.Transport{
		DialContext:       func(ctx context.Context, _, _ string) (net.Conn, error) { return d.Dial(ctx, t) },
		DisableKeepAlives: true,
	}}
}

func get(ctx context.Context, d Dialer, t Target, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://ztunnel-admin"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := httpClient(d, t).Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // the dialer's own error says where
		}
		return nil, fmt.Errorf("ztunnel on node %s: GET %s: %w", t.Node, path, err)
	}
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		return nil, fmt.Errorf("ztunnel on node %s: GET %s: %s: %s", t.Node, path, resp.Status, b)
	}
	return resp, nil
}

// NodeDump is one ztunnel's config dump.
type NodeDump struct {
	Node string
	Dump *admin.Dump
}

// Dumps reads every target's /config_dump concurrently. It returns the dumps
// it got (in target order) and an error per ztunnel that failed.
func Dumps(ctx context.Context, d Dialer, targets []Target) ([]NodeDump, []error) {
	dumps := make([]*admin.Dump, len(targets))
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dumps[i], errs[i] = dump(ctx, d, t)
		}()
	}
	wg.Wait()
	var out []NodeDump
	var failed []error
	for i := range targets {
		if errs[i] != nil {
			failed = append(failed, errs[i])
			continue
		}
		out = append(out, NodeDump{Node: targets[i].Node, Dump: dumps[i]})
	}
	return out, failed
}

func dump(ctx context.Context, d Dialer, t Target) (*admin.Dump, error) {
	ctx, cancel := context.WithTimeout(ctx, requestTimeout)
	defer cancel()
	resp, err := get(ctx, d, t, "/config_dump")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var dump admin.Dump
	if err := json.NewDecoder(resp.Body).Decode(&dump); err != nil {
		return nil, fmt.Errorf("ztunnel on node %s: decoding /config_dump: %w", t.Node, err)
	}
	return &dump, nil
}

// Line is one flow line and the node whose ztunnel reported it.
type Line struct {
	Node string
	Data []byte
}

// FlowsOptions select what Flows asks for.
type FlowsOptions struct {
	Follow  bool // keep the stream open for live records
	History int  // recent records wanted: < 0 all the ztunnel keeps, 0 none
}

// Flows reads t's /debug/flows: it hands the recent records to onHistory
// in one call (also when there are none), then each live record to onLive
// until the stream ends or ctx does. Without Follow there are no live
// records.
func Flows(ctx context.Context, d Dialer, t Target, o FlowsOptions, onHistory func([]Line), onLive func(Line)) error {
	q := url.Values{}
	if o.Follow {
		q.Set("follow", "1")
	}
	if o.History >= 0 {
		q.Set("history", strconv.Itoa(o.History))
	}
	path := "/debug/flows"
	if len(q) > 0 {
		path += "?" + q.Encode()
	}
	if !o.Follow {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, requestTimeout)
		defer cancel()
	}
	resp, err := get(ctx, d, t, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// Without the header (an older ztunnel) every line counts as recent
	// until the stream ends, unless following, where all are live.
	n := -1
	if h := resp.Header.Get(admin.FlowHistoryHeader); h != "" {
		if v, err := strconv.Atoi(h); err == nil && v >= 0 {
			n = v
		}
	} else if o.Follow {
		n = 0
	}
	var history []Line
	historyDone := false
	finishHistory := func() {
		if !historyDone {
			historyDone = true
			onHistory(history)
		}
	}
	if n == 0 {
		finishHistory()
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	for sc.Scan() {
		if len(sc.Bytes()) == 0 {
			continue
		}
		l := Line{Node: t.Node, Data: append([]byte(nil), sc.Bytes()...)}
		if historyDone {
			onLive(l)
			continue
		}
		history = append(history, l)
		if len(history) == n {
			finishHistory()
		}
	}
	if err := sc.Err(); err != nil && ctx.Err() == nil {
		return fmt.Errorf("ztunnel on node %s: reading flows: %w", t.Node, err)
	}
	finishHistory() // also when the stream ended early
	return nil
}
