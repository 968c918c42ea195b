package binarycache

import (
	"errors"
	"io"
	"net"
	"net/http"
	"sync"
	"time"
)

// ServeConn serves HTTP/1.1 on one connection that is not a socket (an SSH
// channel's standard input and output) until the other end closes it or
// sends a request that ends the conversation. Requests on it come one at a
// time, as HTTP/1.1 has them.
func ServeConn(rw io.ReadWriteCloser, h http.Handler) error {
	l := &oneConnListener{conn: &streamConn{rw: rw}, closed: make(chan struct{})}
	srv := &http.Server{
		Handler:        h,
		MaxHeaderBytes: 16 << 10,
		ConnState: func(_ net.Conn, s http.ConnState) {
			if s == http.StateClosed || s == http.StateHijacked {
				l.Close()
			}
		},
	}
	err := srv.Serve(l)
	if errors.Is(err, errListenerDone) {
		return nil
	}
	return err
}

var errListenerDone = errors.New("the connection is closed")

// oneConnListener hands out its connection once, then waits until it is
// closed, so that http.Server stops.
type oneConnListener struct {
	conn   net.Conn
	once   sync.Once
	given  bool
	closed chan struct{}
}

func (l *oneConnListener) Accept() (net.Conn, error) {
	if !l.given {
		l.given = true
		return l.conn, nil
	}
	<-l.closed
	return nil, errListenerDone
}

func (l *oneConnListener) Close() error {
	l.once.Do(func() { close(l.closed) })
	return nil
}

func (l *oneConnListener) Addr() net.Addr { return stdioAddr{} }

// streamConn is a net.Conn over a stream without deadlines: http.Server
// sets some, which a pipe cannot honour; the SSH connection's keepalives and
// sshd bound how long a dead peer can hold it.
type streamConn struct {
	rw io.ReadWriteCloser
}

func (c *streamConn) Read(p []byte) (int, error)         { return c.rw.Read(p) }
func (c *streamConn) Write(p []byte) (int, error)        { return c.rw.Write(p) }
func (c *streamConn) Close() error                       { return c.rw.Close() }
func (c *streamConn) LocalAddr() net.Addr                { return stdioAddr{} }
func (c *streamConn) RemoteAddr() net.Addr               { return stdioAddr{} }
func (c *streamConn) SetDeadline(t time.Time) error      { return nil }
func (c *streamConn) SetReadDeadline(t time.Time) error  { return nil }
func (c *streamConn) SetWriteDeadline(t time.Time) error { return nil }

type stdioAddr struct{}

func (stdioAddr) Network() string { return "stdio" }
func (stdioAddr) String() string  { return "stdio" }
