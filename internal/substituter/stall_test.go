package substituter

import (
	"context"
	"net"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// freezer forwards TCP connections to target until frozen, then holds
// them open and silent: a link that drops packets without a reset.
type freezer struct {
	target string
	l      net.Listener
	mu     sync.Mutex
	frozen bool
	thawed *sync.Cond
}

func newFreezer(t *testing.T, target string) *freezer {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &freezer{target: target, l: l}
	f.thawed = sync.NewCond(&f.mu)
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			go f.pump(c, u)
			go f.pump(u, c)
		}
	}()
	return f
}

func (f *freezer) pump(dst, src net.Conn) {
	defer dst.Close()
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		f.mu.Lock()
		for f.frozen {
			f.thawed.Wait()
		}
		f.mu.Unlock()
		if n > 0 {
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (f *freezer) set(frozen bool) {
	f.mu.Lock()
	f.frozen = frozen
	f.thawed.Broadcast()
	f.mu.Unlock()
}

// A link that goes silent holds one request for the narinfo timeout at
// most; the connection is then dropped and every later request is answered
// at once, while the connection is made again in the background.
func TestStalledLinkIsDropped(t *testing.T) {
	signer := newSigner(t)
	cache := newCacheServer(t, signer.PublicKey())
	cache.addPath(1, 10)
	cache.addPath(2, 10)
	link := newFreezer(t, cache.addr)
	// The substituter knows the cache by the link's address.
	viaLink := &cacheServer{addr: link.l.Addr().String()}
	l := &logs{}
	up, err := NewUpstream(UpstreamConfig{Target: viaLink.target(), Signer: signer, KnownHosts: pinFile(t, viaLink, cache.hostKey.PublicKey()), Logf: l.logf})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := up.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	go up.Run(ctx)
	srv, err := NewServer(up, Options{SpoolBytes: -1, Logf: l.logf})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	srv.narinfoTimeout = 3 * time.Second
	hs := httptest.NewServer(srv)
	defer hs.Close()
	f := &fixture{cache: cache, up: up, srv: srv, url: hs.URL, logs: l}
	if code, _ := f.get(t, "GET", "/"+storeHash(1)+".narinfo"); code != 200 {
		t.Fatal(code)
	}

	link.set(true)
	start := time.Now()
	if code, _ := f.get(t, "GET", "/"+storeHash(2)+".narinfo"); code != 404 {
		t.Errorf("narinfo over a silent link: %d, want 404", code)
	}
	if d := time.Since(start); d > srv.narinfoTimeout+connectTimeout+time.Second {
		t.Errorf("the first request over a silent link took %s", d)
	}
	start = time.Now()
	if code, _ := f.get(t, "GET", "/"+storeHash(2)+".narinfo"); code != 404 {
		t.Errorf("narinfo after the stall: %d, want 404", code)
	}
	// At once: not another wait for the stalled link.
	if d := time.Since(start); d > srv.narinfoTimeout/2 {
		t.Errorf("a request after the stall took %s, want at once", d)
	}
	link.set(false)
	// Once reconnected, narinfos come again. (On a loaded machine a request
	// may still outlast the timeout this test sets, which drops the
	// connection again: that is the behaviour under test, so retry.)
	waitFor(t, "a narinfo after reconnecting", func() bool {
		code, _ := f.get(t, "GET", "/"+storeHash(2)+".narinfo")
		return code == 200
	})
	if !strings.Contains(l.String(), "stalled") {
		t.Errorf("the stall was not logged:\n%s", l)
	}
}
