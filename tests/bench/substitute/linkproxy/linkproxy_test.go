package linkproxy

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// server serves each connection with handle on a loopback port.
func server(t *testing.T, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
	return ln.Addr().String()
}

// echoServer answers each connection with what it reads, until EOF.
func echoServer(t *testing.T) string {
	return server(t, func(c net.Conn) { io.Copy(c, c) })
}

// sinkServer reads each connection to EOF, then writes back how many bytes
// it read as one byte per MiB (enough for the tests) and closes.
func sinkServer(t *testing.T) string {
	return server(t, func(c net.Conn) {
		n, _ := io.Copy(io.Discard, c)
		c.Write([]byte{byte(n >> 20)})
	})
}

func start(t *testing.T, target string, link Link) *Proxy {
	t.Helper()
	p, err := Start(target, link)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// The round trip through the proxy is the configured RTT (loose bounds:
// loopback adds little, a loaded machine may add some).
func TestRTT(t *testing.T) {
	const rtt = 60 * time.Millisecond
	p := start(t, echoServer(t), Link{RTT: rtt})
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var rtts []time.Duration
	buf := make([]byte, 5)
	for range 5 {
		start := time.Now()
		if _, err := c.Write([]byte("ping!")); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
		rtts = append(rtts, time.Since(start))
	}
	med := slices.Sorted(slices.Values(rtts))[len(rtts)/2]
	if med < rtt || med > rtt+50*time.Millisecond {
		t.Errorf("median round trip %v through a %v link, want %v to %v", med, rtt, rtt, rtt+50*time.Millisecond)
	}
	if string(buf) != "ping!" {
		t.Errorf("echo %q", buf)
	}
}

// Data is carried intact, and a half-close reaches the other side.
func TestIntactAndHalfClose(t *testing.T) {
	p := start(t, echoServer(t), Link{RTT: 10 * time.Millisecond, Bandwidth: 50 << 20})
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	data := make([]byte, 3<<20+17)
	rand.Read(data)
	go func() {
		c.Write(data)
		c.(*net.TCPConn).CloseWrite()
	}()
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	got, err := io.ReadAll(c)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("got %d bytes back, not the %d sent", len(got), len(data))
	}
	if up, down := p.Bytes(); up != int64(len(data)) || down != int64(len(data)) {
		t.Errorf("counted %d up, %d down; want %d each", up, down, len(data))
	}
}

// Throughput is the bandwidth limit, shared by concurrent connections, and
// a long RTT does not reduce it (a delay line, not a sleep per read).
func TestBandwidthSharedAndNotCutByLatency(t *testing.T) {
	const (
		bandwidth = 8 << 20 // bytes/s
		perConn   = 2 << 20
		conns     = 2
		rtt       = 100 * time.Millisecond
	)
	p := start(t, sinkServer(t), Link{RTT: rtt, Bandwidth: bandwidth})
	payload := make([]byte, perConn)
	rand.Read(payload)
	startT := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := net.Dial("tcp", p.Addr().String())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			if _, err := c.Write(payload); err != nil {
				errs <- err
				return
			}
			c.(*net.TCPConn).CloseWrite()
			c.SetReadDeadline(time.Now().Add(20 * time.Second))
			ack := make([]byte, 1)
			if _, err := io.ReadFull(c, ack); err != nil {
				errs <- err
				return
			}
			if int(ack[0]) != perConn>>20 {
				t.Errorf("server read %d MiB, want %d", ack[0], perConn>>20)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	elapsed := time.Since(startT)
	// The ideal: all bytes at the shared bandwidth, plus one RTT for the
	// ack. Per-connection limits would take half that; a sleep per read
	// (32 KiB per RTT/2) would take 64 × 50 ms = 3.2 s per connection.
	ideal := time.Duration(float64(conns*perConn)/bandwidth*float64(time.Second)) + rtt
	if elapsed < ideal*9/10 || elapsed > ideal*3/2+200*time.Millisecond {
		t.Errorf("%d × %d bytes through an %d B/s, %v link took %v; want about %v", conns, perConn, bandwidth, rtt, elapsed, ideal)
	}
	t.Logf("%d × %d bytes: %v (ideal %v)", conns, perConn, elapsed, ideal)
}

// Close ends open connections and returns.
func TestClose(t *testing.T) {
	p, err := Start(echoServer(t), Link{RTT: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", p.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	io.ReadFull(c, make([]byte, 1))
	done := make(chan struct{})
	go func() { p.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return")
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("connection still open after Close")
	}
}
