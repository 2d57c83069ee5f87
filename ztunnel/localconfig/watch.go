package localconfig

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"time"

	"github.com/ambientmesh/ambient/internal/state"
)

// pollInterval is how often Watch looks at the file.
const pollInterval = time.Second

// Watch loads the file at path, passes it to apply, and then checks the file
// every second, calling apply again with the new contents whenever they change
// and parse. A bad edit, or a file that disappears for a while (an editor
// replacing it), is logged and otherwise ignored: the last good config stays
// in force until a good one replaces it. apply is called from Watch's
// goroutine only, never concurrently.
//
// The first load must succeed: an error there is returned at once, so a
// broken file fails startup instead of starting an empty mesh. After that,
// Watch runs until ctx is done and then returns nil. A nil logger discards.
func Watch(ctx context.Context, path string, apply func(state.Snapshot), logger *slog.Logger) error {
	return watch(ctx, path, apply, logger, pollInterval)
}

// ParseFunc checks a version of a watched file. On success it returns the
// function that puts it in force, and key/value pairs describing it for
// the log; a file it refuses leaves the last good version in force.
type ParseFunc func(data []byte) (apply func(), summary []any, err error)

// WatchFile is [Watch] for a file of another shape (another proxy's local
// config built on [ParseSections]): parse decides what a version means.
// Same polling, same keep-the-last-good-config rule, same first-load
// failure; apply functions run on Watch's goroutine only.
func WatchFile(ctx context.Context, path string, parse ParseFunc, logger *slog.Logger) error {
	return watchFile(ctx, path, parse, logger, pollInterval)
}

// meshParser is the ParseFunc of ztunnel's own file.
func meshParser(apply func(state.Snapshot)) ParseFunc {
	return func(data []byte) (func(), []any, error) {
		snap, err := parse(data)
		if err != nil {
			return nil, nil, err
		}
		return func() { apply(snap) },
			[]any{"workloads", len(snap.Workloads), "services", len(snap.Services), "policies", len(snap.Policies)}, nil
	}
}

// fileStamp is what tells a changed file from an unchanged one without
// reading it.
type fileStamp struct {
	mod  time.Time
	size int64
	info fs.FileInfo // for os.SameFile: a rename over the path changes it
}

func (a fileStamp) same(b fileStamp) bool {
	return a.mod.Equal(b.mod) && a.size == b.size && os.SameFile(a.info, b.info)
}

func watch(ctx context.Context, path string, apply func(state.Snapshot), logger *slog.Logger, interval time.Duration) error {
	return watchFile(ctx, path, meshParser(apply), logger, interval)
}

func watchFile(ctx context.Context, path string, parse ParseFunc, logger *slog.Logger, interval time.Duration) error {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	w := &watcher{path: path, parse: parse, log: logger.With("path", path)}
	if err := w.load(); err != nil {
		return err
	}
	w.run(ctx, interval)
	return nil
}

// watcher is the state of one Watch call; only its goroutine touches it.
type watcher struct {
	path    string
	parse   ParseFunc
	log     *slog.Logger
	stamp   fileStamp
	applied []byte // the contents last applied
	lastErr string // the error last logged, to log each problem once
}

// load reads the file the first time; any error is fatal.
func (w *watcher) load() error {
	info, err := os.Stat(w.path)
	if err != nil {
		return fmt.Errorf("localconfig: %w", err)
	}
	data, err := os.ReadFile(w.path)
	if err != nil {
		return fmt.Errorf("localconfig: %w", err)
	}
	apply, summary, err := w.parse(data)
	if err != nil {
		return fmt.Errorf("localconfig: %s: %w", w.path, err)
	}
	w.stamp = fileStamp{info.ModTime(), info.Size(), info}
	w.applied = data
	apply()
	w.log.Info("local config loaded", summary...)
	return nil
}

// run polls the file until ctx is done.
func (w *watcher) run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			w.poll()
		}
	}
}

// poll reloads the file if its stamp changed.
func (w *watcher) poll() {
	info, err := os.Stat(w.path)
	if err != nil {
		w.fail(fmt.Errorf("stat: %w", err))
		return
	}
	stamp := fileStamp{info.ModTime(), info.Size(), info}
	if stamp.same(w.stamp) {
		return
	}
	data, err := os.ReadFile(w.path)
	if err != nil {
		w.fail(fmt.Errorf("read: %w", err))
		return
	}
	if bytes.Equal(data, w.applied) {
		w.stamp = stamp // touched, not changed
		w.lastErr = ""
		return
	}
	apply, summary, err := w.parse(data)
	if err != nil {
		// Remember the stamp so the same bad contents are not parsed (and
		// logged) every second; the next edit changes it again.
		w.stamp = stamp
		w.fail(err)
		return
	}
	w.stamp, w.applied, w.lastErr = stamp, data, ""
	apply()
	w.log.Info("local config reloaded", summary...)
}

// fail logs err once per distinct problem.
func (w *watcher) fail(err error) {
	if msg := err.Error(); msg != w.lastErr {
		w.lastErr = msg
		w.log.Warn("local config not reloaded; keeping the last good one: fix the file", "error", err)
	}
}
