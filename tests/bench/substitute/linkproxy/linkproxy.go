// Package linkproxy is a TCP proxy on loopback that behaves like a WAN
// link: each direction has a one-way delay of RTT/2 and a bandwidth limit
// shared by every connection through the proxy (one link, not a limit per
// connection).
//
// It is a delay line, not a sleep per read: each chunk read from one side
// is stamped with the time it finishes crossing the link (its turn on the
// shared bandwidth, then the propagation delay) and a writer releases it at
// that time, while the reader goes on reading. Latency therefore costs a
// round trip per request and answer, as on a real link, but does not cut
// throughput; only the bandwidth limit does (and whatever windows the
// protocols above keep, such as SSH's channel window, as they would on a
// real link). TCP's own windows play no part: the proxy reads as fast as
// the link drains.
//
// Toxiproxy would do as a library, but it brings a dozen modules (and a
// per-connection bandwidth "toxic", where a link shares its bandwidth);
// this is a hundred lines with no dependencies.
package linkproxy

import (
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Link is the shape of the link the proxy plays.
type Link struct {
	// RTT is the round-trip time the proxy adds: RTT/2 in each direction.
	RTT time.Duration
	// Bandwidth is the limit per direction in bytes per second, shared by
	// all connections; 0 means none.
	Bandwidth float64
}

// Proxy listens on a loopback port and forwards each connection to Target
// across the simulated link.
type Proxy struct {
	Target string

	ln        net.Listener
	delay     time.Duration
	up, down  *direction // client→target, target→client
	wg        sync.WaitGroup
	mu        sync.Mutex
	conns     map[net.Conn]struct{}
	closed    bool
	accepted  atomic.Int64
	chunkSize int
}

// direction is one direction of the link: a FIFO that serialises chunks at
// the bandwidth, whichever connection they belong to.
type direction struct {
	bandwidth float64
	mu        sync.Mutex
	free      time.Time // when the link has sent everything given to it
	bytes     atomic.Int64
}

// send takes n bytes onto the link and returns when their last byte has
// left: the link's queue decides, not the connection.
func (d *direction) send(n int) time.Time {
	d.bytes.Add(int64(n))
	now := time.Now()
	if d.bandwidth <= 0 {
		return now
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	start := d.free
	if start.Before(now) {
		start = now
	}
	d.free = start.Add(time.Duration(float64(n) / d.bandwidth * float64(time.Second)))
	return d.free
}

// Start listens on 127.0.0.1 (a free port) and serves until Close.
func Start(target string, link Link) (*Proxy, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p := &Proxy{
		Target:    target,
		ln:        ln,
		delay:     link.RTT / 2,
		up:        &direction{bandwidth: link.Bandwidth},
		down:      &direction{bandwidth: link.Bandwidth},
		conns:     map[net.Conn]struct{}{},
		chunkSize: 32 << 10,
	}
	p.wg.Add(1)
	go p.serve()
	return p, nil
}

// Addr is the proxy's listening address.
func (p *Proxy) Addr() *net.TCPAddr { return p.ln.Addr().(*net.TCPAddr) }

// Port is the proxy's listening port.
func (p *Proxy) Port() int { return p.Addr().Port }

// Bytes reports how many bytes went client→target (up) and target→client
// (down) since Start.
func (p *Proxy) Bytes() (up, down int64) { return p.up.bytes.Load(), p.down.bytes.Load() }

// Connections reports how many connections the proxy accepted.
func (p *Proxy) Connections() int64 { return p.accepted.Load() }

// Close stops listening, closes every connection and waits for the
// proxy's goroutines.
func (p *Proxy) Close() error {
	p.mu.Lock()
	p.closed = true
	for c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	err := p.ln.Close()
	p.wg.Wait()
	return err
}

func (p *Proxy) track(c net.Conn) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		c.Close()
		return false
	}
	p.conns[c] = struct{}{}
	return true
}

func (p *Proxy) untrack(c net.Conn) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	c.Close()
}

func (p *Proxy) serve() {
	defer p.wg.Done()
	for {
		client, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.accepted.Add(1)
		p.wg.Add(1)
		go p.handle(client)
	}
}

func (p *Proxy) handle(client net.Conn) {
	defer p.wg.Done()
	if !p.track(client) {
		return
	}
	defer p.untrack(client)
	server, err := net.DialTimeout("tcp", p.Target, 10*time.Second)
	if err != nil {
		return
	}
	if !p.track(server) {
		return
	}
	defer p.untrack(server)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() { defer wg.Done(); p.pump(server, client, p.up) }()
	go func() { defer wg.Done(); p.pump(client, server, p.down) }()
	wg.Wait()
}

type chunk struct {
	data []byte
	due  time.Time
}

// pump carries src's bytes to dst across d: the reader takes each chunk
// onto the link (waiting for its turn on the bandwidth, which is what
// pushes back on the sender) and queues it with its arrival time; the
// writer delivers it then. At EOF it half-closes dst once the queue is
// delivered.
func (p *Proxy) pump(dst, src net.Conn, d *direction) {
	queue := make(chan chunk, 1<<14)
	done := make(chan struct{})
	go func() {
		defer close(done)
		failed := false
		for c := range queue {
			if failed {
				continue // drain, so that the reader never blocks
			}
			sleepUntil(c.due)
			if _, err := dst.Write(c.data); err != nil {
				failed = true
				src.Close() // wakes the reader
			}
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && !failed {
			cw.CloseWrite()
		}
	}()
	for {
		buf := make([]byte, p.chunkSize)
		n, err := src.Read(buf)
		if n > 0 {
			sent := d.send(n)
			// Back-pressure on the sender, but a little early: waking
			// late for every chunk (a sleep overshoots by tens to hundreds
			// of microseconds, more on a loaded machine) would leave the
			// link idle each time, and cap one connection well under the
			// bandwidth. The link's own clock (d.free) stays exact.
			sleepUntil(sent.Add(-queueSlack))
			queue <- chunk{buf[:n], sent.Add(p.delay)}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				dst.Close()
			}
			break
		}
	}
	close(queue)
	<-done
}

// queueSlack is how far ahead of the link a sender may be: the link's
// queue, as a router's buffer holds a few milliseconds of traffic.
const queueSlack = 5 * time.Millisecond

func sleepUntil(t time.Time) {
	if d := time.Until(t); d > 0 {
		time.Sleep(d)
	}
}
