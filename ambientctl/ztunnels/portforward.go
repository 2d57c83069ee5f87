package ztunnels

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
)

// ZtunnelNamespace and ZtunnelSelector find the ztunnel pods.
const (
	ZtunnelNamespace = "istio-system"
	ZtunnelSelector  = "app=ztunnel"
)

// ErrNoZtunnel says no ztunnel pod exists.
var ErrNoZtunnel = errors.New("no ztunnel pods found in namespace istio-system (label app=ztunnel); install the mesh with: kubectl apply -k manifests/")

// PortForward reaches each ztunnel pod's admin port with a port-forward
// through the API server, one SPDY connection per Dial.
type PortForward struct {
	Config *rest.Config
	Client kubernetes.Interface
	// Port is the admin port in the pod; 0 means 15000.
	Port int
}

// Targets lists the running ztunnel pods.
func (d *PortForward) Targets(ctx context.Context) ([]Target, error) {
	pods, err := d.Client.CoreV1().Pods(ZtunnelNamespace).List(ctx, metav1.ListOptions{LabelSelector: ZtunnelSelector})
	if err != nil {
		return nil, fmt.Errorf("listing ztunnel pods: %w", err)
	}
	var out []Target
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			continue
		}
		out = append(out, Target{Node: p.Spec.NodeName, Namespace: p.Namespace, Pod: p.Name})
	}
	if len(out) == 0 {
		return nil, ErrNoZtunnel
	}
	slices.SortFunc(out, func(a, b Target) int {
		if a.Node != b.Node {
			if a.Node < b.Node {
				return -1
			}
			return 1
		}
		if a.Pod < b.Pod {
			return -1
		}
		return 1
	})
	return out, nil
}

var requestID atomic.Int64

// Dial opens a port-forward to t.Pod's admin port.
func (d *PortForward) Dial(ctx context.Context, t Target) (net.Conn, error) {
	port := d.Port
	if port == 0 {
		port = 15000
	}
	rt, upgrader, err := spdy.RoundTripperFor(d.Config)
	if err != nil {
		return nil, err
	}
	u := d.Client.CoreV1().RESTClient().Post().Resource("pods").Namespace(t.Namespace).Name(t.Pod).SubResource("portforward").URL()
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u)
	type result struct {
		c   httpstream.Connection
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, _, err := dialer.Dial(portforward.PortForwardProtocolV1Name)
		done <- result{c, err}
	}()
	var conn httpstream.Connection
	select {
	case r := <-done:
		if r.err != nil {
			return nil, fmt.Errorf("port-forward to pod %s/%s: %w", t.Namespace, t.Pod, r.err)
		}
		conn = r.c
	case <-ctx.Done():
		go func() {
			if r := <-done; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
	id := strconv.FormatInt(requestID.Add(1), 10)
	h := http.Header{}
	h.Set(corev1.StreamType, corev1.StreamTypeError)
	h.Set(corev1.PortHeader, strconv.Itoa(port))
	h.Set(corev1.PortForwardRequestIDHeader, id)
	errStream, err := conn.CreateStream(h)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("port-forward to pod %s/%s: %w", t.Namespace, t.Pod, err)
	}
	errStream.Close() // nothing to send on it
	h.Set(corev1.StreamType, corev1.StreamTypeData)
	data, err := conn.CreateStream(h)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("port-forward to pod %s/%s: %w", t.Namespace, t.Pod, err)
	}
	c := &streamConn{conn: conn, data: data}
	go c.watchErrors(errStream)
	return c, nil
}

// Close does nothing: each connection owns its SPDY connection.
func (d *PortForward) Close() error { return nil }

// streamConn is a port-forward data stream as a net.Conn.
type streamConn struct {
	conn httpstream.Connection
	data httpstream.Stream
	once sync.Once
	mu   sync.Mutex // guards remoteErr
	rerr error
}

func (c *streamConn) watchErrors(s httpstream.Stream) {
	msg, err := io.ReadAll(s)
	if err == nil && len(msg) > 0 {
		c.mu.Lock()
		c.rerr = fmt.Errorf("port-forward: %s", msg)
		c.mu.Unlock()
		c.Close()
	}
}

func (c *streamConn) Read(b []byte) (int, error) {
	n, err := c.data.Read(b)
	if err != nil {
		c.mu.Lock()
		if c.rerr != nil {
			err = c.rerr
		}
		c.mu.Unlock()
	}
	return n, err
}
func (c *streamConn) Write(b []byte) (int, error) { return c.data.Write(b) }
func (c *streamConn) Close() error {
	c.once.Do(func() {
		c.data.Reset()
		c.conn.Close()
	})
	return nil
}
func (c *streamConn) LocalAddr() net.Addr              { return pfAddr{} }
func (c *streamConn) RemoteAddr() net.Addr             { return pfAddr{} }
func (c *streamConn) SetDeadline(time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(time.Time) error { return nil }

type pfAddr struct{}

func (pfAddr) Network() string { return "portforward" }
func (pfAddr) String() string  { return "portforward" }
