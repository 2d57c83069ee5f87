package hbone

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Idle connections hold no goroutine. A splice whose socket has been quiet
// for parkAfter hands the socket to the idle poller — one epoll set of our
// own, itself watched by the runtime poller — and its copy goroutine exits;
// the socket's first readiness starts a new one. Busy connections never
// pass through the poller, so it costs nothing per request.

// parkAfter is how long a socket must be quiet, since its last read,
// before it is parked. Tests shorten it.
var parkAfter atomic.Int64

func init() { parkAfter.Store(int64(2 * time.Second)) }

// sweepEvery is how often parked sockets are checked for having been closed
// by someone else (a closed descriptor leaves the epoll set silently).
const sweepEvery = 30 * time.Second

// States of a parked socket.
const (
	parkWaiting uint32 = iota
	parkResumed
	parkCancelled
)

// parked is a socket's entry in the idle poller; one entry serves any
// number of park/resume rounds of the same socket, one at a time.
type parked struct {
	token  uint64 // while waiting
	rc     syscall.RawConn
	resume func()
	state  atomic.Uint32
}

// init prepares e for rc; resume runs on a new goroutine once rc is
// readable, has hung up or failed, unless cancelled first.
func (e *parked) init(rc syscall.RawConn, resume func()) {
	e.rc, e.resume = rc, resume
}

// idlePoller waits for readiness of parked sockets.
type idlePoller struct {
	epfd int
	file *os.File // epfd in the runtime poller

	mu      sync.Mutex
	next    uint64
	waiting map[uint64]*parked
}

var (
	pollerOnce sync.Once
	thePoller  *idlePoller // nil when epoll is unavailable: nothing parks
)

// idle returns the process's idle poller, starting it on first use.
func idle() *idlePoller {
	pollerOnce.Do(func() {
		p, err := newIdlePoller()
		if err == nil {
			thePoller = p
			go p.run()
		}
	})
	return thePoller
}

func newIdlePoller() (*idlePoller, error) {
	fd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("hbone: epoll_create1: %w", err)
	}
	if err := syscall.SetNonblock(fd, true); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("hbone: epoll non-blocking: %w", err)
	}
	return &idlePoller{epfd: fd, file: os.NewFile(uintptr(fd), "hbone-idle"), waiting: make(map[uint64]*parked)}, nil
}

// parkedCount reports how many sockets are parked (for tests and metrics).
func (p *idlePoller) parkedCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.waiting)
}

// ParkedConnections reports how many idle connections wait in the idle
// poller without a goroutine.
func ParkedConnections() int {
	if p := idle(); p != nil {
		return p.parkedCount()
	}
	return 0
}

// park registers e's socket; e.resume runs on a new goroutine once it is
// readable, has hung up or failed, unless cancel comes first. resume may
// run before park returns. e must not be waiting already.
func (p *idlePoller) park(e *parked) error {
	e.state.Store(parkWaiting)
	p.mu.Lock()
	p.next++
	e.token = p.next
	p.waiting[e.token] = e
	p.mu.Unlock()
	var cerr error
	err := e.rc.Control(func(fd uintptr) {
		ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT,
			Fd: int32(e.token), Pad: int32(e.token >> 32)}
		cerr = syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_ADD, int(fd), &ev)
	})
	if err == nil {
		err = cerr
	}
	if err != nil {
		p.mu.Lock()
		delete(p.waiting, e.token)
		p.mu.Unlock()
		return err
	}
	return nil
}

// cancel takes e out unless it has already been resumed; it reports
// whether it did (and so resume will not run).
func (p *idlePoller) cancel(e *parked) bool {
	if !e.state.CompareAndSwap(parkWaiting, parkCancelled) {
		return false
	}
	p.forget(e)
	return true
}

// fire resumes the socket of token, if still waiting. Looking the token
// up and taking the entry out happen under one lock, so a late duplicate
// (an event and a sweep for the same token) cannot resume a later round of
// the same entry.
func (p *idlePoller) fire(token uint64) {
	p.mu.Lock()
	e := p.waiting[token]
	if e == nil || !e.state.CompareAndSwap(parkWaiting, parkResumed) {
		p.mu.Unlock()
		return
	}
	delete(p.waiting, token)
	p.mu.Unlock()
	p.unregister(e)
	go e.resume()
}

// forget drops e from the set.
func (p *idlePoller) forget(e *parked) {
	p.mu.Lock()
	delete(p.waiting, e.token)
	p.mu.Unlock()
	p.unregister(e)
}

// unregister takes e's socket out of the epoll set. Deleting through
// Control is safe against a concurrent close: a closed socket's descriptor
// (and number) is not used.
func (p *idlePoller) unregister(e *parked) {
	e.rc.Control(func(fd uintptr) {
		syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
	})
}

// run dispatches readiness forever, sweeping for closed sockets now and
// then.
func (p *idlePoller) run() {
	rc, err := p.file.SyscallConn()
	if err != nil {
		return
	}
	events := make([]syscall.EpollEvent, 256)
	var n int
	wait := func(fd uintptr) bool {
		var err error
		n, err = syscall.EpollWait(int(fd), events, 0)
		if err != nil {
			n = 0
		}
		return n > 0
	}
	p.file.SetReadDeadline(time.Now().Add(sweepEvery))
	for {
		if err := rc.Read(wait); err != nil {
			p.sweep()
			p.file.SetReadDeadline(time.Now().Add(sweepEvery))
			continue
		}
		for _, ev := range events[:n] {
			p.fire(uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32)
		}
	}
}

// sweep resumes parked sockets that were closed under the poller, so their
// splices see the error and end.
func (p *idlePoller) sweep() {
	p.mu.Lock()
	var closed []uint64
	for tok, e := range p.waiting {
		if e.rc.Control(func(uintptr) {}) != nil {
			closed = append(closed, tok)
		}
	}
	p.mu.Unlock()
	for _, tok := range closed {
		p.fire(tok)
	}
}
