package substituter

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nixcache/nixcache/internal/binarycache"
)

type fixture struct {
	cache *cacheServer
	up    *Upstream
	srv   *Server
	url   string
	logs  *logs
}

type logs struct {
	mu    sync.Mutex
	lines []string
}

func (l *logs) logf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, fmt.Sprintf(format, args...))
}

func (l *logs) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

func newFixture(t *testing.T, opt Options) *fixture {
	t.Helper()
	signer := newSigner(t)
	f := &fixture{cache: newCacheServer(t, signer.PublicKey()), logs: &logs{}}
	up, err := NewUpstream(UpstreamConfig{
		Target: f.cache.target(), Signer: signer,
		KnownHosts: pinFile(t, f.cache, f.cache.hostKey.PublicKey()), Logf: f.logs.logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := up.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	go up.Run(ctx)
	opt.SpoolDir = t.TempDir()
	opt.Logf = f.logs.logf
	srv, err := NewServer(up, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	hs := httptest.NewUnstartedServer(srv)
	hs.Config.ConnContext = srv.ConnContext
	hs.Start()
	t.Cleanup(hs.Close)
	f.up, f.srv, f.url = up, srv, hs.URL
	return f
}

// get does what Nix does for one file and returns the status and body.
func (f *fixture) get(t *testing.T, method, path string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp.StatusCode, string(b)
}

// waitFor polls cond for up to 5 s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if cond() {
			return
		}
	}
	t.Fatalf("gave up waiting for %s", what)
}

func TestNarinfoAnswersAreCached(t *testing.T) {
	f := newFixture(t, Options{SpoolBytes: -1})
	f.cache.addPath(1, 10)
	for range 3 {
		if code, body := f.get(t, "GET", "/"+storeHash(1)+".narinfo"); code != 200 || !strings.Contains(body, "StorePath: /nix/store/"+storeHash(1)) {
			t.Fatalf("narinfo: %d %q", code, body)
		}
		if code, _ := f.get(t, "HEAD", "/"+storeHash(1)+".narinfo"); code != 200 {
			t.Fatalf("HEAD narinfo: %d", code)
		}
		if code, _ := f.get(t, "GET", "/"+storeHash(2)+".narinfo"); code != 404 {
			t.Fatalf("missing narinfo: %d", code)
		}
		if code, body := f.get(t, "GET", "/nix-cache-info"); code != 200 || !strings.Contains(body, "StoreDir: /nix/store") {
			t.Fatalf("nix-cache-info: %d %q", code, body)
		}
	}
	// One request each reached the cache (a narinfo is asked for with its
	// closure): the rest were answered from memory, the 404 included.
	for _, p := range []string{"GET " + binarycache.ClosurePrefix + storeHash(1), "GET " + binarycache.ClosurePrefix + storeHash(2), "GET /nix-cache-info"} {
		if n := f.cache.files.count(p); n != 1 {
			t.Errorf("%q reached the cache %d times, want 1: %q", p, n, f.cache.files.requests())
		}
	}
}

// Only the contract's three shapes of request reach the cache, rebuilt
// from their names: nothing a local process sends can make the proxy ask
// the cache for anything else.
func TestOnlyContractPathsReachTheCache(t *testing.T) {
	f := newFixture(t, Options{SpoolBytes: -1})
	f.cache.files.small["/secret"] = "do not serve"
	for _, p := range []string{
		"/secret",
		"/../secret",
		"/nar/../secret",
		"/%2e%2e/secret",
		"/" + storeHash(1) + ".narinfo?x=/secret",
		"/nix-cache-info?/secret",
		"/nar/" + storeHash(1) + ".nar",
		"/nar/" + narName(1) + "/../../secret",
		"/" + strings.Repeat("e", 32) + ".narinfo", // 'e' is not base 32
		"//" + storeHash(1) + ".narinfo",
		"/log/" + storeHash(1),
		"/realisations/x.doi",
	} {
		code, body := f.get(t, "GET", p)
		if code != 404 || strings.Contains(body, "do not serve") {
			t.Errorf("GET %s: %d %q, want 404", p, code, body)
		}
	}
	if code, _ := f.get(t, "POST", "/nix-cache-info"); code != http.StatusMethodNotAllowed {
		t.Errorf("POST: %d, want 405", code)
	}
	if got := f.cache.files.requests(); len(got) != 0 {
		t.Errorf("the cache was asked %q", got)
	}
}

// A narinfo request means Nix lacks the path: the narinfos of its closure
// and its NAR are fetched before Nix asks, and the NAR is then served from
// the spool and deleted.
func TestPrefetch(t *testing.T) {
	f := newFixture(t, Options{SpoolBytes: 1 << 20})
	// 1 -> 2 -> 3, and 1 -> 4; 5 is too big for the spool.
	f.cache.addPath(3, 1000)
	f.cache.addPath(2, 2000, 3, 2)
	f.cache.addPath(4, 3000)
	f.cache.addPath(1, 4000, 2, 4)
	f.cache.addPath(5, 2<<20)
	if code, _ := f.get(t, "GET", "/"+storeHash(1)+".narinfo"); code != 200 {
		t.Fatal(code)
	}
	// The closure's narinfos came with 1's, in one request.
	if n := f.cache.files.count("GET " + binarycache.ClosurePrefix + storeHash(1)); n != 1 {
		t.Fatalf("1's closure was asked for %d times, want 1: %q", n, f.cache.files.requests())
	}
	waitFor(t, "the NAR in the spool", func() bool { return f.cache.files.count("GET /nar/"+narName(1)) == 1 })
	// Nix now asks for the closure's narinfos and the NAR: none of it
	// goes to the cache again.
	for _, i := range []int{2, 3, 4} {
		code, body := f.get(t, "GET", "/"+storeHash(i)+".narinfo")
		if code != 200 {
			t.Fatalf("narinfo %d: %d", i, code)
		}
		// Byte for byte the cache's, though it came within 1's closure.
		f.cache.files.mu.Lock()
		want := f.cache.files.small["/"+storeHash(i)+".narinfo"]
		f.cache.files.mu.Unlock()
		if body != want {
			t.Errorf("narinfo %d from the closure:\n%q\nthe cache's:\n%q", i, body, want)
		}
	}
	code, body := f.get(t, "GET", "/nar/"+narName(1))
	if code != 200 || len(body) != 4000 || !isPattern(body) {
		t.Fatalf("NAR from the spool: %d, %d bytes", code, len(body))
	}
	if n := f.cache.files.count("GET /nar/" + narName(1)); n != 1 {
		t.Errorf("the NAR was fetched %d times, want 1", n)
	}
	for _, i := range []int{2, 3, 4} {
		if n := f.cache.files.count("GET /"+storeHash(i)+".narinfo") + f.cache.files.count("GET "+binarycache.ClosurePrefix+storeHash(i)); n != 0 {
			t.Errorf("narinfo %d was fetched %d times more, want none: it came with 1's closure", i, n)
		}
	}
	// Served once, the NAR left the spool (a second request goes to the
	// cache).
	waitFor(t, "the NARs of 2, 3 and 4 to be spooled", func() bool { return f.srv.spool.usedBytes() == 2000+1000+3000 })
	if code, body := f.get(t, "GET", "/nar/"+narName(1)); code != 200 || len(body) != 4000 {
		t.Fatalf("NAR again: %d", code)
	}
	if n := f.cache.files.count("GET /nar/" + narName(1)); n != 2 {
		t.Errorf("the NAR was fetched %d times, want 2", n)
	}
	// Too big for the spool: streamed when asked, never prefetched.
	if code, _ := f.get(t, "GET", "/"+storeHash(5)+".narinfo"); code != 200 {
		t.Fatal(code)
	}
	time.Sleep(100 * time.Millisecond)
	if n := f.cache.files.count("GET /nar/" + narName(5)); n != 0 {
		t.Errorf("a NAR larger than the spool was prefetched")
	}
	if code, body := f.get(t, "GET", "/nar/"+narName(5)); code != 200 || len(body) != 2<<20 || !isPattern(body) {
		t.Errorf("large NAR: %d, %d bytes", code, len(body))
	}
}

func isPattern(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != byte(i%251) {
			return false
		}
	}
	return true
}

// While the cache is down every request is answered at once, in the way
// that makes Nix build (see unreachable.go), and the connection comes back
// by itself.
func TestCacheDownAnswersAtOnce(t *testing.T) {
	f := newFixture(t, Options{SpoolBytes: -1})
	f.cache.addPath(1, 10)
	f.cache.stop()
	waitFor(t, "the loss to be noticed", func() bool { return !f.up.Up() })
	start := time.Now()
	if code, _ := f.get(t, "GET", "/nix-cache-info"); code != http.StatusNotImplemented {
		t.Errorf("nix-cache-info never fetched, cache down: %d, want 501", code)
	}
	if code, _ := f.get(t, "GET", "/"+storeHash(1)+".narinfo"); code != 404 {
		t.Errorf("narinfo, cache down: %d, want 404", code)
	}
	if code, _ := f.get(t, "GET", "/nar/"+narName(1)); code != http.StatusBadGateway {
		t.Errorf("NAR, cache down: %d, want 502", code)
	}
	// At once: far under connectTimeout, the least a wait on the network
	// would cost (a loaded machine may still take a while to answer).
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("three answers took %s while the cache was down", d)
	}
	f.cache.restart()
	waitFor(t, "the reconnection", f.up.Up)
	// The 404 given while down was not remembered.
	if code, _ := f.get(t, "GET", "/"+storeHash(1)+".narinfo"); code != 200 {
		t.Errorf("narinfo after reconnecting: %d", code)
	}
	if !strings.Contains(f.logs.String(), "lost the connection") || !strings.Contains(f.logs.String(), "connected to the cache") {
		t.Errorf("state changes not logged:\n%s", f.logs)
	}
}

// A NAR the cache compressed with zstd (which the substituter asks for)
// reaches Nix decoded, whether it was prefetched into the spool or is
// streamed when Nix asks.
func TestCompressedNARsAreDecoded(t *testing.T) {
	for _, spool := range []int64{-1, 8 << 20} {
		f := newFixture(t, Options{SpoolBytes: spool})
		f.cache.files.encoding = "zstd"
		const size = 3<<20 + 17
		f.cache.addPath(1, size)
		if code, _ := f.get(t, "GET", "/"+storeHash(1)+".narinfo"); code != 200 {
			t.Fatal(code)
		}
		code, body := f.get(t, "GET", "/nar/"+narName(1))
		want, _ := io.ReadAll(io.LimitReader(&pattern{}, size))
		if code != 200 || body != string(want) {
			t.Errorf("spool %d: NAR %d, %d bytes, want the %d bytes the cache compressed", spool, code, len(body), size)
		}
	}
}

// A NAR in an encoding nobody asked for (a server that sends gzip
// regardless) is refused, neither passed on nor spooled as if it were the
// NAR.
func TestUnaskedEncodingIsRefused(t *testing.T) {
	f := newFixture(t, Options{SpoolBytes: 1 << 20})
	f.cache.files.encoding = "gzip"
	f.cache.addPath(1, 100)
	if code, _ := f.get(t, "GET", "/"+storeHash(1)+".narinfo"); code != 200 {
		t.Fatal(code)
	}
	waitFor(t, "the prefetch", func() bool { return f.cache.files.count("GET /nar/") == 1 })
	waitFor(t, "the refused prefetch to leave the spool", func() bool { return f.srv.spool.usedBytes() == 0 })
	if code, _ := f.get(t, "GET", "/nar/"+narName(1)); code != http.StatusBadGateway {
		t.Errorf("NAR sent as gzip: %d, want 502", code)
	}
	if !strings.Contains(f.logs.String(), `Content-Encoding "gzip"`) {
		t.Errorf("not logged:\n%s", f.logs)
	}
}

// NARs that do not fit in the spool yet are fetched as Nix takes the
// others out, unless Nix asks for them first.
func TestPrefetchWaitsForRoom(t *testing.T) {
	f := newFixture(t, Options{SpoolBytes: 2000})
	for i := 1; i <= 4; i++ {
		f.cache.addPath(i, 1000)
		if code, _ := f.get(t, "GET", "/"+storeHash(i)+".narinfo"); code != 200 {
			t.Fatal(code)
		}
	}
	waitFor(t, "two NARs in the spool", func() bool { return f.srv.spool.usedBytes() == 2000 })
	time.Sleep(3 * roomPoll)
	if n := f.cache.files.count("GET /nar/"); n != 2 {
		t.Fatalf("%d NARs fetched into a spool with room for 2", n)
	}
	// Nix asks for NAR 4 (streamed: it is not in the spool), then takes
	// 1 and 2 out: 3 is fetched ahead, 4 is not fetched again.
	for _, i := range []int{4, 1, 2} {
		if code, body := f.get(t, "GET", "/nar/"+narName(i)); code != 200 || len(body) != 1000 {
			t.Fatalf("NAR %d: %d", i, code)
		}
	}
	waitFor(t, "NAR 3 in the spool", func() bool { return f.cache.files.count("GET /nar/"+narName(3)) == 1 })
	if code, _ := f.get(t, "GET", "/nar/"+narName(3)); code != 200 {
		t.Fatal(code)
	}
	time.Sleep(3 * roomPoll)
	for i := 1; i <= 4; i++ {
		if n := f.cache.files.count("GET /nar/" + narName(i)); n != 1 {
			t.Errorf("NAR %d fetched %d times, want 1", i, n)
		}
	}
}

// A hostile cache's zstd bomb (a few KB on the wire that decode to far
// more than the narinfo's NarSize) reaches Nix cut at NarSize, streamed or
// spooled.
func TestCompressedNARsAreCutAtTheirSize(t *testing.T) {
	for _, spool := range []int64{-1, 8 << 20} {
		f := newFixture(t, Options{SpoolBytes: spool})
		f.cache.files.encoding = "zstd"
		f.cache.files.inflate = 256 << 20
		f.cache.addPath(1, 1000)
		if code, _ := f.get(t, "GET", "/"+storeHash(1)+".narinfo"); code != 200 {
			t.Fatal(code)
		}
		if _, body := f.get(t, "GET", "/nar/"+narName(1)); len(body) > 1000 {
			t.Errorf("spool %d: Nix got %d bytes of a NAR whose narinfo says 1000", spool, len(body))
		}
	}
}

// A narinfo that points Nix elsewhere for the NAR (an absolute URL is not
// covered by the signature) is not passed on.
func TestNarinfosPointingElsewhereAreRefused(t *testing.T) {
	f := newFixture(t, Options{})
	for i, url := range []string{"http://169.254.169.254/latest.nar", "file:///etc/shadow", "nar/../../x.nar"} {
		f.cache.files.mu.Lock()
		f.cache.files.small["/"+storeHash(i+1)+".narinfo"] = fmt.Sprintf(
			"StorePath: /nix/store/%s-p\nURL: %s\nCompression: none\nNarSize: 10\nReferences: \n", storeHash(i+1), url)
		f.cache.files.mu.Unlock()
		if code, body := f.get(t, "GET", "/"+storeHash(i+1)+".narinfo"); code == 200 {
			t.Errorf("a narinfo with URL %s was passed on: %s", url, body)
		}
	}
}

// NAR downloads that never finish (a local user can start them and not
// read) do not starve the narinfo lookups Nix waits on: those have
// channels of their own.
func TestStalledNARsLeaveChannelsForNarinfos(t *testing.T) {
	f := newFixture(t, Options{SpoolBytes: -1})
	for i := 1; i <= 8; i++ {
		f.cache.addPath(i, 2<<30)
	}
	f.cache.addPath(100, 10)
	for i := 1; i <= 8; i++ {
		if code, _ := f.get(t, "HEAD", "/"+storeHash(i)+".narinfo"); code != 200 {
			t.Fatal(code)
		}
		c, err := net.Dial("tcp", strings.TrimPrefix(f.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "GET /nar/%s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", narName(i))
	}
	time.Sleep(500 * time.Millisecond)
	// Starved, the narinfo would wait out its timeout and come back 404.
	start := time.Now()
	if code, _ := f.get(t, "GET", "/"+storeHash(100)+".narinfo"); code != 200 {
		t.Errorf("with every NAR channel held, a narinfo took %v and got %d\n%s", time.Since(start), code, f.logs)
	}
}
