package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/wire"
)

// These tests play the daemon's side of the protocol at versions this
// machine's Nix (2.8, protocol 1.34) cannot: Nix 2.3 (1.21), 2.18 and Lix
// (1.35), and current Nix (1.38). The field layouts follow Nix's
// daemon.cc and worker-protocol serialisers for each version; the real
// daemon is exercised in daemon_integration_test.go.

// peer is the daemon end of a connection, with helpers that fail the test on
// any I/O error.
type peer struct {
	t *testing.T
	r *bufio.Reader
	w *bufio.Writer
	c net.Conn
}

func (p *peer) u64() uint64 {
	p.t.Helper()
	n, err := wire.ReadUint64(p.r)
	if err != nil {
		p.t.Errorf("daemon side: reading: %v", err)
		panic(errPeer)
	}
	return n
}

func (p *peer) str() string {
	p.t.Helper()
	s, err := wire.ReadString(p.r, 1<<20)
	if err != nil {
		p.t.Errorf("daemon side: reading: %v", err)
		panic(errPeer)
	}
	return s
}

func (p *peer) strs() []string {
	n := p.u64()
	out := make([]string, n)
	for i := range out {
		out[i] = p.str()
	}
	return out
}

func (p *peer) send(fields ...any) {
	for _, f := range fields {
		switch v := f.(type) {
		case int:
			wire.WriteUint64(p.w, uint64(v))
		case uint64:
			wire.WriteUint64(p.w, v)
		case bool:
			wire.WriteBool(p.w, v)
		case string:
			wire.WriteString(p.w, v)
		case []string:
			wire.WriteUint64(p.w, uint64(len(v)))
			for _, s := range v {
				wire.WriteString(p.w, s)
			}
		default:
			panic(fmt.Sprintf("cannot send %T", f))
		}
	}
	p.w.Flush()
}

var errPeer = errors.New("peer failed")

// fakeDaemon serves one connection: the handshake as a daemon of version v
// would, then serve for the operations.
func fakeDaemon(t *testing.T, v Version, serve func(p *peer, clientVersion Version)) *Conn {
	t.Helper()
	client, server := net.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		defer server.Close()
		defer func() {
			if r := recover(); r != nil && r != errPeer {
				panic(r)
			}
		}()
		p := &peer{t: t, r: bufio.NewReader(server), w: bufio.NewWriter(server), c: server}
		if m := p.u64(); m != workerMagic1 {
			t.Errorf("client magic %x", m)
			return
		}
		p.send(workerMagic2, uint64(v))
		cv := Version(p.u64())
		nego := min(cv, v)
		if nego.Minor() >= 14 {
			if aff := p.u64(); aff != 0 {
				t.Errorf("client sent CPU affinity %d", aff)
			}
		}
		if nego.Minor() >= 11 {
			if rs := p.u64(); rs != 0 {
				t.Errorf("client sent reserveSpace %d", rs)
			}
		}
		if nego.Minor() >= 33 {
			p.send("2.99.0")
		}
		if nego.Minor() >= 35 {
			p.send(2) // not trusted
		}
		p.send(stderrLast)
		serve(p, cv)
	}()
	t.Cleanup(func() {
		client.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("fake daemon did not finish")
		}
	})
	errc := make(chan error, 1)
	var conn *Conn
	go func() {
		var err error
		conn, err = handshakeOver(client)
		errc <- err
	}()
	if err := <-errc; err != nil {
		t.Fatalf("handshake with a %s daemon: %v", v, err)
	}
	return conn
}

// handshakeOver runs Dial's handshake over an existing connection.
func handshakeOver(nc net.Conn) (*Conn, error) {
	c := newConn(nc)
	return c, c.handshake()
}

func v(minor uint64) Version { return Version(1<<8 | minor) }

// sendPathInfo sends QueryPathInfo's reply for a valid path.
func sendPathInfo(p *peer, refs []string, sigs []string) {
	p.send(stderrLast, true, "/nix/store/dddddddddddddddddddddddddddddddd-x.drv",
		strings.Repeat("ab", 32), refs, 1700000000, 4242, true, sigs, "")
}

func TestHandshakeAcrossVersions(t *testing.T) {
	for _, tc := range []struct {
		daemon     Version
		wantNego   Version
		wantNix    string
		wantTrust  Trust
		wantDaemon Version
	}{
		{v(21), v(21), "", TrustUnknown, v(21)},       // Nix 2.3
		{v(34), v(34), "2.99.0", TrustUnknown, v(34)}, // Nix 2.8
		{v(35), v(35), "2.99.0", NotTrusted, v(35)},   // Nix 2.18, Lix
		{v(38), v(37), "2.99.0", NotTrusted, v(38)},   // Nix 2.24+: no feature exchange below 1.38
	} {
		t.Run(tc.daemon.String(), func(t *testing.T) {
			c := fakeDaemon(t, tc.daemon, func(p *peer, cv Version) {
				if cv != ClientVersion {
					t.Errorf("client advertised %s, want %s", cv, ClientVersion)
				}
			})
			if c.Version() != tc.wantNego || c.DaemonVersion != tc.wantDaemon ||
				c.DaemonNixVersion != tc.wantNix || c.Trust != tc.wantTrust {
				t.Errorf("got version %s daemon %s nix %q trust %s", c.Version(), c.DaemonVersion, c.DaemonNixVersion, c.Trust)
			}
		})
	}
}

func TestHandshakeRefusesOldAndForeignDaemons(t *testing.T) {
	for _, bad := range []uint64{1<<8 | 20, 2<<8 | 40} {
		client, server := net.Pipe()
		go func() {
			defer server.Close()
			r := bufio.NewReader(server)
			wire.ReadUint64(r)
			wire.WriteUint64(server, workerMagic2)
			wire.WriteUint64(server, bad)
		}()
		_, err := handshakeOver(client)
		var pe *ProtocolError
		if !errors.As(err, &pe) {
			t.Errorf("daemon version %x: err = %v, want a protocol error", bad, err)
		}
		client.Close()
	}
}

func TestQueryValidPathsSubstituteFlag(t *testing.T) {
	// The flag exists from 1.27 on; before, sending it would desynchronise.
	for _, minor := range []uint64{21, 26, 27, 34, 37} {
		t.Run(fmt.Sprint(minor), func(t *testing.T) {
			c := fakeDaemon(t, v(minor), func(p *peer, _ Version) {
				if op := p.u64(); op != opQueryValidPaths {
					t.Errorf("op %d", op)
				}
				paths := p.strs()
				if minor >= 27 {
					if sub := p.u64(); sub != 0 {
						t.Errorf("substitute flag %d, want 0", sub)
					}
				}
				p.send(stderrLast, paths[:1])
			})
			got, err := c.QueryValidPaths([]string{"/nix/store/a", "/nix/store/b"})
			if err != nil || len(got) != 1 || got[0] != "/nix/store/a" {
				t.Fatalf("got %v, %v", got, err)
			}
		})
	}
}

func TestQueryPathInfoDecoding(t *testing.T) {
	refs := []string{"/nix/store/cccccccccccccccccccccccccccccccc-b", "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-a"}
	c := fakeDaemon(t, v(35), func(p *peer, _ Version) {
		p.u64()
		p.str()
		sendPathInfo(p, refs, []string{"k:sig"})
		p.u64()
		p.str()
		p.send(stderrLast, false) // not valid
	})
	info, err := c.QueryPathInfo("/nix/store/x")
	if err != nil {
		t.Fatal(err)
	}
	if info.NarSize != 4242 || len(info.NarHash) != 32 || info.NarHash[0] != 0xab || !info.Ultimate ||
		len(info.References) != 2 || info.Sigs[0] != "k:sig" || info.RegistrationTime != 1700000000 {
		t.Errorf("decoded %+v", info)
	}
	if _, err := c.QueryPathInfo("/nix/store/y"); !errors.Is(err, ErrNotValid) {
		t.Errorf("invalid path: err = %v, want ErrNotValid", err)
	}
}

func TestStderrMessagesAndErrors(t *testing.T) {
	for _, minor := range []uint64{21, 26, 37} {
		t.Run(fmt.Sprint(minor), func(t *testing.T) {
			c := fakeDaemon(t, v(minor), func(p *peer, _ Version) {
				p.u64()
				p.str()
				p.strs()
				// A log line and an activity with fields, then a result.
				p.send(stderrNext, "building\n")
				p.send(stderrStartActivity, 7, 3, 105, "copying path", []string{}, 0)
				p.send(stderrResult, 7, 101, 2, 0, 5, 1, "text")
				p.send(stderrStopActivity, 7)
				if minor >= 26 {
					p.send(stderrError, "Error", 0, "Error", "error: path '\x1b[35;1m/nix/store/x\x1b[0m' is not valid", 0, 1, 0, "while adding")
				} else {
					p.send(stderrError, "error: path '/nix/store/x' is not valid", 1)
				}
				// The connection still works afterwards.
				p.u64()
				p.str()
				p.send(stderrLast, true)
			})
			var logged []string
			c.Log = func(s string) { logged = append(logged, s) }
			err := c.AddSignatures("/nix/store/x", []string{"k:s"})
			var re *RemoteError
			if !errors.As(err, &re) || err.Error() != "path '/nix/store/x' is not valid" {
				t.Fatalf("err = %v (%T), want the daemon's message without colour codes", err, err)
			}
			if strings.Join(logged, "|") != "building|copying path" {
				t.Errorf("logged %q", logged)
			}
			ok, err := c.IsValidPath("/nix/store/y")
			if err != nil || !ok {
				t.Fatalf("after an error: %v %v", ok, err)
			}
		})
	}
}

// feedSignings returns a closed channel holding reqs.
func feedSignings(reqs []Signing) <-chan Signing {
	ch := make(chan Signing, len(reqs))
	for _, r := range reqs {
		ch <- r
	}
	close(ch)
	return ch
}

func TestPipelinedBatchKeepsOrderAndPerPathErrors(t *testing.T) {
	const n = 3000 // more than a socket buffer holds, to catch a deadlock
	c := fakeDaemon(t, v(34), func(p *peer, _ Version) {
		for i := range n {
			if op := p.u64(); op != opAddSignatures {
				t.Errorf("op %d", op)
			}
			path := p.str()
			p.strs()
			if i%1000 == 999 {
				p.send(stderrError, "Error", 0, "Error", "no such path "+path, 0, 0)
			} else {
				p.send(stderrLast, 1)
			}
		}
	})
	reqs := make([]Signing, n)
	for i := range reqs {
		reqs[i] = Signing{Path: fmt.Sprintf("/nix/store/%032d-p", i), Sigs: []string{strings.Repeat("s", 100)}}
	}
	var failed []int
	i := 0
	err := c.AddSignaturesStream(context.Background(), feedSignings(reqs), func(r Signing, err error) error {
		if r.Path != reqs[i].Path {
			t.Errorf("reply %d is for %s, want %s", i, r.Path, reqs[i].Path)
		}
		if err != nil {
			if !strings.Contains(err.Error(), reqs[i].Path) {
				t.Errorf("error for %d names another path: %v", i, err)
			}
			failed = append(failed, i)
		}
		i++
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(failed) != "[999 1999 2999]" {
		t.Errorf("failed %v", failed)
	}
}

func TestPipelineStopsWhenTheDaemonHangsUp(t *testing.T) {
	c := fakeDaemon(t, v(34), func(p *peer, _ Version) {
		p.u64()
		p.str()
		p.strs()
		p.send(stderrLast, 1)
		p.c.Close()
	})
	reqs := make([]Signing, 500)
	for i := range reqs {
		reqs[i] = Signing{Path: "/nix/store/p", Sigs: []string{"k:s"}}
	}
	calls := 0
	err := c.AddSignaturesStream(context.Background(), feedSignings(reqs), func(Signing, error) error { calls++; return nil })
	if err == nil {
		t.Fatal("a batch whose daemon hung up succeeded")
	}
	if calls != 1 {
		t.Errorf("%d replies reported, want 1", calls)
	}
}
