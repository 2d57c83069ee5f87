package kubeletapi

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"time"
)

// LogOptions are the query parameters of /containerLogs, as kubectl logs
// sends them through the apiserver. The node agent's log file is the
// container's raw output (every run appended, no per-line times), which
// shapes what each does:
//
//   - follow=true: after what is there, stream what is appended until the
//     client goes away, the pod leaves the node, or limitBytes is reached.
//   - tailLines=N: only the last N lines (a final line without a newline
//     counts).
//   - limitBytes=N: at most N bytes in all.
//   - sinceSeconds=N / sinceTime=RFC3339: the file has no per-line times,
//     so the cut is per file: the existing content is shown only if the
//     file was written at or after that moment (its modification time);
//     followed lines always are.
//   - timestamps=true: accepted and ignored: there are no times to show,
//     and inventing them would mislead.
//   - previous=true: refused (400): the agent keeps no separate log of a
//     previous run; the one file holds every run.
type LogOptions struct {
	Follow     bool
	TailLines  int64 // -1: all
	LimitBytes int64 // 0: no limit
	Since      time.Time
	Timestamps bool
	Previous   bool
}

// ParseLogOptions reads the query; now anchors sinceSeconds.
func ParseLogOptions(q url.Values, now time.Time) (LogOptions, error) {
	o := LogOptions{TailLines: -1}
	var err error
	boolean := func(name string, dst *bool) {
		if v := q.Get(name); v != "" && err == nil {
			b, perr := strconv.ParseBool(v)
			if perr != nil {
				err = fmt.Errorf("query parameter %s=%q: want true or false", name, v)
			}
			*dst = b
		}
	}
	number := func(name string, min int64) (int64, bool) {
		v := q.Get(name)
		if v == "" || err != nil {
			return 0, false
		}
		n, perr := strconv.ParseInt(v, 10, 64)
		if perr != nil || n < min {
			err = fmt.Errorf("query parameter %s=%q: want an integer >= %d", name, v, min)
			return 0, false
		}
		return n, true
	}
	boolean("follow", &o.Follow)
	boolean("timestamps", &o.Timestamps)
	boolean("previous", &o.Previous)
	if n, ok := number("tailLines", 0); ok {
		o.TailLines = n
	}
	if n, ok := number("limitBytes", 1); ok {
		o.LimitBytes = n
	}
	secs, hasSecs := number("sinceSeconds", 1)
	if hasSecs {
		o.Since = now.Add(-time.Duration(secs) * time.Second)
	}
	if v := q.Get("sinceTime"); v != "" && err == nil {
		if hasSecs {
			return o, errors.New("at most one of sinceSeconds and sinceTime may be given")
		}
		t, perr := time.Parse(time.RFC3339, v)
		if perr != nil {
			return o, fmt.Errorf("query parameter sinceTime=%q: want RFC 3339: %w", v, perr)
		}
		o.Since = t
	}
	return o, err
}

// tailOffset returns where the last n lines of the first size bytes of r
// start. A trailing newline ends the last line; a final line without one
// still counts.
func tailOffset(r io.ReaderAt, size, n int64) (int64, error) {
	if n < 0 {
		return 0, nil
	}
	if n == 0 {
		return size, nil
	}
	buf := make([]byte, 32<<10)
	seen := int64(0)
	for pos := size; pos > 0; {
		chunk := min(int64(len(buf)), pos)
		pos -= chunk
		b := buf[:chunk]
		if _, err := r.ReadAt(b, pos); err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] != '\n' || pos+int64(i) == size-1 {
				continue
			}
			if seen++; seen == n {
				return pos + int64(i) + 1, nil
			}
		}
	}
	return 0, nil
}

// startOffset is where the response starts in a file of size bytes
// modified at mtime.
func (o LogOptions) startOffset(r io.ReaderAt, size int64, mtime time.Time) (int64, error) {
	if !o.Since.IsZero() && mtime.Before(o.Since) {
		return size, nil
	}
	return tailOffset(r, size, o.TailLines)
}

func (s *Server) serveLogs(w http.ResponseWriter, r *http.Request) {
	ns, pod, ctr := r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container")
	opts, err := ParseLogOptions(r.URL.Query(), time.Now())
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	lf, err := s.cfg.Runtime.LogFile(ns, pod, ctr)
	if err != nil {
		httpError(w, err)
		return
	}
	if opts.Previous {
		http.Error(w, fmt.Sprintf("previous terminated container %q in pod %q not found: the node agent keeps one log per container, every run appended (kubectl logs without --previous shows it)", ctr, pod), http.StatusBadRequest)
		return
	}
	f, err := os.Open(lf.Path)
	if errors.Is(err, os.ErrNotExist) {
		http.Error(w, fmt.Sprintf("container %q in pod %q is waiting to start: no log yet", ctr, pod), http.StatusBadRequest)
		return
	} else if err != nil {
		httpError(w, fmt.Errorf("container log: %w", err))
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		httpError(w, fmt.Errorf("container log: %w", err))
		return
	}
	off, err := opts.startOffset(f, st.Size(), st.ModTime())
	if err != nil {
		httpError(w, fmt.Errorf("container log: %w", err))
		return
	}
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		httpError(w, fmt.Errorf("container log: %w", err))
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(http.StatusOK)
	out := &flushWriter{w: w, rc: http.NewResponseController(w), left: opts.LimitBytes}
	if err := copyLog(r.Context(), out, f, opts.Follow, lf.Gone, s.cfg.FollowPoll); err != nil && !errors.Is(err, errLimit) {
		s.log.Debug("container log stream ended", "pod", ns+"/"+pod, "container", ctr, "err", err)
	}
}

// errLimit ends a response that reached limitBytes.
var errLimit = errors.New("limitBytes reached")

// flushWriter writes through to the client at once, up to left bytes
// (0: no limit).
type flushWriter struct {
	w    io.Writer
	rc   *http.ResponseController
	left int64
}

func (f *flushWriter) Write(p []byte) (int, error) {
	limited := false
	if f.left > 0 && int64(len(p)) >= f.left {
		p, limited = p[:f.left], true
	}
	n, err := f.w.Write(p)
	if f.left > 0 {
		f.left -= int64(n)
	}
	if err == nil {
		err = f.rc.Flush()
	}
	if err == nil && limited {
		err = errLimit
	}
	return n, err
}

// copyLog copies f from its offset to out; with follow it then polls
// for more every poll until ctx ends or gone is closed (after a last
// read).
func copyLog(ctx context.Context, out io.Writer, f io.Reader, follow bool, gone <-chan struct{}, poll time.Duration) error {
	buf := make([]byte, 32<<10)
	drain := func() error {
		for {
			n, err := f.Read(buf)
			if n > 0 {
				if _, werr := out.Write(buf[:n]); werr != nil {
					return werr
				}
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
		}
	}
	if err := drain(); err != nil || !follow {
		return err
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-gone:
			return drain()
		case <-t.C:
		}
		if err := drain(); err != nil {
			return err
		}
	}
}
