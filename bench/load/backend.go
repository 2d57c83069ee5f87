package load

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"
)

// BackendConfig configures a Backend.
type BackendConfig struct {
	// Listener accepts the benchmark connections; the backend closes it.
	Listener net.Listener
	// BufSize is the read/write chunk for bulk transfers (default 256 KiB).
	BufSize int
	// Logger receives per-connection errors (default: discard).
	Logger *slog.Logger
}

// Backend is the server end of every benchmark path: it discards uploads,
// generates downloads and echoes requests.
type Backend struct {
	cfg BackendConfig

	mu    sync.Mutex // mu guards conns.
	conns map[net.Conn]struct{}
}

// NewBackend validates cfg.
func NewBackend(cfg BackendConfig) (*Backend, error) {
	if cfg.Listener == nil {
		return nil, errors.New("load: backend needs a listener")
	}
	if cfg.BufSize <= 0 {
		cfg.BufSize = 256 << 10
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Backend{cfg: cfg, conns: make(map[net.Conn]struct{})}, nil
}

// Addr is the address clients dial.
func (b *Backend) Addr() string { return b.cfg.Listener.Addr().String() }

// Run serves until ctx is done, then closes the listener and every open
// connection and waits for their handlers.
func (b *Backend) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	stop := context.AfterFunc(ctx, func() {
		b.cfg.Listener.Close()
		b.mu.Lock()
		for c := range b.conns {
			c.Close()
		}
		b.mu.Unlock()
	})
	defer stop()
	defer wg.Wait()
	for {
		c, err := b.cfg.Listener.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("load: backend accept: %w", err)
		}
		b.mu.Lock()
		if ctx.Err() != nil {
			b.mu.Unlock()
			c.Close()
			continue
		}
		b.conns[c] = struct{}{}
		b.mu.Unlock()
		wg.Go(func() { b.serveBenchConn(c) })
	}
}

func (b *Backend) serveBenchConn(c net.Conn) {
	defer func() {
		b.mu.Lock()
		delete(b.conns, c)
		b.mu.Unlock()
		c.Close()
	}()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetNoDelay(true)
	}
	c.SetReadDeadline(time.Now().Add(30 * time.Second))
	h, err := readHeader(c)
	if err != nil {
		b.cfg.Logger.Debug("backend: header", "remote", c.RemoteAddr(), "err", err)
		return
	}
	c.SetReadDeadline(time.Time{})
	if _, err := c.Write([]byte{ackByte}); err != nil {
		return
	}
	switch h.Op {
	case OpUpload:
		err = b.sink(c, h.Length)
	case OpDownload:
		err = b.source(c, h.Length)
	case OpEcho:
		err = echo(c, int(h.Length))
	}
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		b.cfg.Logger.Debug("backend: serve", "op", string(rune(h.Op)), "remote", c.RemoteAddr(), "err", err)
	}
}

func (b *Backend) sink(c net.Conn, n uint64) error {
	buf := make([]byte, b.cfg.BufSize)
	var got uint64
	for got < n {
		k, err := c.Read(buf[:min(uint64(len(buf)), n-got)])
		got += uint64(k)
		if err != nil {
			return fmt.Errorf("load: upload after %d of %d bytes: %w", got, n, err)
		}
	}
	var reply [8]byte
	binary.BigEndian.PutUint64(reply[:], got)
	_, err := c.Write(reply[:])
	return err
}

func (b *Backend) source(c net.Conn, n uint64) error {
	var g [1]byte
	if _, err := io.ReadFull(c, g[:]); err != nil {
		return err
	}
	if g[0] != goByte {
		return fmt.Errorf("%w: expected go byte, got %q", ErrBadHeader, g[0])
	}
	buf := make([]byte, b.cfg.BufSize)
	for sent := uint64(0); sent < n; {
		k, err := c.Write(buf[:min(uint64(len(buf)), n-sent)])
		sent += uint64(k)
		if err != nil {
			return fmt.Errorf("load: download after %d of %d bytes: %w", sent, n, err)
		}
	}
	return nil
}

func echo(c net.Conn, size int) error {
	buf := make([]byte, size)
	for {
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if _, err := c.Write(buf); err != nil {
			return err
		}
	}
}
