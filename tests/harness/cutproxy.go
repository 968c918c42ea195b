package harness

import (
	"io"
	"net"
	"sync"
)

// CutProxy forwards TCP connections on a loopback port to a target (sshd)
// and, once armed with CutAfter(n), closes every connection it carries when
// n more bytes have gone from the clients to the target: an SSH connection
// cut at a chosen byte, as a network failure would cut it. Connections made
// after the cut pass untouched, so a retry can succeed.
type CutProxy struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	armed bool
	left  int64
	cut   bool
	conns map[net.Conn]bool
}

// StartCutProxy listens on a free loopback port for target.
func StartCutProxy(target string) (*CutProxy, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &CutProxy{l: l, target: target, conns: map[net.Conn]bool{}}
	go p.serve()
	return p, nil
}

// Port is the proxy's port.
func (p *CutProxy) Port() int { return p.l.Addr().(*net.TCPAddr).Port }

// CutAfter arms the proxy: after n more bytes towards the target, every
// connection open then is closed.
func (p *CutProxy) CutAfter(n int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.armed, p.left, p.cut = true, n, false
}

// Cut reports whether the armed cut happened.
func (p *CutProxy) Cut() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cut
}

// Close stops listening and closes every connection.
func (p *CutProxy) Close() error {
	err := p.l.Close()
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	return err
}

func (p *CutProxy) serve() {
	for {
		c, err := p.l.Accept()
		if err != nil {
			return
		}
		go p.forward(c)
	}
}

func (p *CutProxy) forward(client net.Conn) {
	server, err := net.Dial("tcp", p.target)
	if err != nil {
		client.Close()
		return
	}
	p.mu.Lock()
	p.conns[client], p.conns[server] = true, true
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.conns, client)
		delete(p.conns, server)
		p.mu.Unlock()
		client.Close()
		server.Close()
	}()
	done := make(chan struct{})
	go func() {
		io.Copy(client, server)
		client.Close()
		close(done)
	}()
	buf := make([]byte, 32<<10)
	for {
		n, err := client.Read(buf)
		if n > 0 {
			n, cut := p.take(n)
			if _, werr := server.Write(buf[:n]); werr != nil {
				break
			}
			if cut {
				p.closeAll()
				break
			}
		}
		if err != nil {
			break
		}
	}
	server.Close()
	<-done
}

// take counts n bytes towards an armed cut and returns how many of them
// may pass, and whether the cut falls after them: it falls at exactly the
// chosen byte.
func (p *CutProxy) take(n int) (int, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.armed {
		return n, false
	}
	if int64(n) >= p.left {
		n = int(p.left)
		p.armed, p.cut, p.left = false, true, 0
		return n, true
	}
	p.left -= int64(n)
	return n, false
}

// closeAll closes every open connection, at the cut.
func (p *CutProxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
}
