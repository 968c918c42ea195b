package daemon

import (
	"bufio"
	"errors"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
)

// allocatedBy returns how many bytes fn allocated, counting every goroutine:
// callers keep other goroutines quiet while fn runs.
func allocatedBy(fn func()) uint64 {
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	fn()
	runtime.ReadMemStats(&after)
	return after.TotalAlloc - before.TotalAlloc
}

// The other end of a connection may be an ssh-ng:// cache that root's doctor
// asks for its paths. Each case is a reply of a few bytes that announces far
// more than it sends, then hangs up: the client must fail without
// allocating for what never arrived.
func TestAnnouncedSizesDoNotDriveAllocation(t *testing.T) {
	const (
		hugeCount = 50<<20 - 1 // a list count just under the old maxListLen
		hugeLen   = 1 << 20    // a string length at maxStringLen
	)
	valid := "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-x"
	for _, tc := range []struct {
		name  string
		reply []any // after the request has been read
		call  func(c *Conn) error
	}{
		{"all valid paths", []any{stderrLast, hugeCount},
			func(c *Conn) error { _, err := c.QueryAllValidPaths(); return err }},
		{"valid paths", []any{stderrLast, hugeCount},
			func(c *Conn) error { _, err := c.QueryValidPaths([]string{valid}); return err }},
		{"references", []any{stderrLast, true, "", strings.Repeat("ab", 32), hugeCount},
			func(c *Conn) error { _, err := c.QueryPathInfo(valid); return err }},
		{"signatures", []any{stderrLast, true, "", strings.Repeat("ab", 32), []string{}, 1, 2, false, hugeCount},
			func(c *Conn) error { _, err := c.QueryPathInfo(valid); return err }},
		{"deriver", []any{stderrLast, true, hugeLen},
			func(c *Conn) error { _, err := c.QueryPathInfo(valid); return err }},
		{"log line", []any{stderrNext, hugeLen},
			func(c *Conn) error { _, err := c.IsValidPath(valid); return err }},
		{"activity text", []any{stderrStartActivity, 1, 0, 0, hugeLen},
			func(c *Conn) error { _, err := c.IsValidPath(valid); return err }},
		{"activity field", []any{stderrStartActivity, 1, 0, 0, "", 1, 1, hugeLen},
			func(c *Conn) error { _, err := c.IsValidPath(valid); return err }},
		{"result field", []any{stderrResult, 1, 0, 1, 1, hugeLen},
			func(c *Conn) error { _, err := c.IsValidPath(valid); return err }},
		{"error message", []any{stderrError, "Error", 0, "Error", hugeLen},
			func(c *Conn) error { _, err := c.IsValidPath(valid); return err }},
		{"error trace", []any{stderrError, "Error", 0, "Error", "m", 0, 1, 0, hugeLen},
			func(c *Conn) error { _, err := c.IsValidPath(valid); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sent := make(chan struct{})
			c := fakeDaemon(t, v(37), func(p *peer, _ Version) {
				go io.Copy(io.Discard, p.r) // whatever the request is
				<-sent
				p.send(tc.reply...)
				p.c.Close()
			})
			var err error
			alloc := allocatedBy(func() {
				close(sent)
				err = tc.call(c)
			})
			var pe *ProtocolError
			if !errors.As(err, &pe) {
				t.Errorf("err = %v (%T), want a protocol error", err, err)
			}
			// The peer's own sends and the request account for a few KiB.
			if alloc > 256<<10 {
				t.Errorf("a reply of %d fields made the client allocate %d KiB", len(tc.reply), alloc>>10)
			}
		})
	}
}

func TestHandshakeVersionStringAllocatesLittle(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		defer server.Close()
		p := &peer{t: t, r: bufio.NewReader(server), w: bufio.NewWriter(server), c: server}
		p.u64()
		p.send(workerMagic2, uint64(v(35)))
		p.u64()
		p.u64()
		p.u64()
		p.send(1 << 20) // a Nix version of a MiB, never sent
	}()
	var err error
	alloc := allocatedBy(func() { _, err = handshakeOver(client) })
	if err == nil {
		t.Error("a greeting cut short succeeded")
	}
	// The Conn's two 64 KiB buffers are most of it.
	if alloc > 256<<10 {
		t.Errorf("a greeting of 24 bytes made the client allocate %d KiB", alloc>>10)
	}
}

// A peer that keeps sending, however slowly, is cut off at the reply limit
// rather than read, and kept, for ever.
func TestReplyLongerThanTheLimitFails(t *testing.T) {
	path := "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-" + strings.Repeat("x", 60)
	for _, tc := range []struct {
		name string
		send func(p *peer)
		call func(c *Conn) error
	}{
		{"paths", func(p *peer) {
			p.send(stderrLast, 1<<20)
			for p.w.Flush() == nil {
				p.send(path)
			}
		}, func(c *Conn) error { _, err := c.QueryAllValidPaths(); return err }},
		{"log lines", func(p *peer) {
			for p.w.Flush() == nil {
				p.send(stderrNext, "building\n")
			}
		}, func(c *Conn) error { _, err := c.IsValidPath(path); return err }},
		{"count beyond what may follow", func(p *peer) {
			p.send(stderrLast, 1<<20)
		}, func(c *Conn) error { _, err := c.QueryAllValidPaths(); return err }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := fakeDaemon(t, v(37), func(p *peer, _ Version) {
				go io.Copy(io.Discard, p.r)
				tc.send(p)
			})
			c.in.max = 256 << 10
			err := tc.call(c)
			if !errors.As(err, new(*ProtocolError)) || !strings.Contains(err.Error(), "longer than") {
				t.Errorf("err = %v, want the reply cut off", err)
			}
			c.Close()
		})
	}
}
