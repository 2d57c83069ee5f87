package connectudp

// Conn is an open CONNECT-UDP tunnel as its user sees it, whichever
// transport carries it: *Session (DATAGRAM capsules on an HTTP/2 stream,
// package hbone) or the HTTP/3 datagram tunnel of package hbone3. Each
// WriteDatagram is one UDP datagram to the target, each ReadDatagram one
// datagram back; boundaries are kept. The peer's clean end is io.EOF.
type Conn interface {
	ReadDatagram(p []byte) (int, error)
	WriteDatagram(p []byte) error
	Close() error
}

var _ Conn = (*Session)(nil)
