//go:build harness

package integration_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"golang.org/x/crypto/ssh"

	"github.com/nixcache/nixcache/internal/audit"
	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/nixkey"
	"github.com/nixcache/nixcache/internal/publish"
	"github.com/nixcache/nixcache/internal/registry"
	"github.com/nixcache/nixcache/tests/harness"
)

// These tests run the publisher in-process on a socket of their own, in
// front of the harness's daemon, which trusts the Env's cache key. They
// upload paths with random names into the machine's /nix/store and delete
// what they made valid.

// testPublisher is a publisher with two push clients and a pull client.
type testPublisher struct {
	t      *testing.T
	key    nixkey.SecretKey
	roots  string
	socket string
	http   *http.Client
	// keys are the clients' SSH key fingerprints by name.
	keys map[string]string

	logMu sync.Mutex
	log   []string
	audit bytes.Buffer // through an audit.Writer, which locks
	// inflight counts requests the handler has not finished.
	inflight atomic.Int64
	refused  chan uint32
}

type publisherOptions struct {
	maxNarSize uint64
	key        *nixkey.SecretKey // default: the Env's cache key
}

func startPublisher(t *testing.T, opt publisherOptions) *testPublisher {
	t.Helper()
	dir := t.TempDir()
	// World-traversable, and the socket world-writable below: the kernel
	// lets anyone connect, so that only SO_PEERCRED stands in the way.
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tp := &testPublisher{t: t, roots: filepath.Join(dir, "roots"), socket: filepath.Join(dir, "publisher.sock"),
		keys: map[string]string{}, refused: make(chan uint32, 10)}
	if opt.key != nil {
		tp.key = *opt.key
	} else {
		k, loose, err := nixkey.ReadSecretKeyFile(env.CacheSecretKey)
		if err != nil || loose {
			t.Fatalf("the Env's cache key: %v (loose %v)", err, loose)
		}
		tp.key = k
	}
	reg := filepath.Join(dir, "clients.toml")
	roles := map[string]registry.Role{"builder": registry.Push, "ci": registry.Push, "laptop": registry.Pull}
	err := registry.Edit(reg, true, func(r *registry.Registry) error {
		for _, name := range slices.Sorted(maps.Keys(roles)) {
			pub, _, err := ed25519.GenerateKey(rand.Reader)
			if err != nil {
				return err
			}
			sk, err := ssh.NewPublicKey(pub)
			if err != nil {
				return err
			}
			tp.keys[name] = ssh.FingerprintSHA256(sk)
			if err := r.Add(name, sk, "", roles[name]); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	p := publish.New(publish.Config{
		Registry: reg, Key: tp.key, Roots: tp.roots, MaxNarSize: opt.maxNarSize,
		DaemonSocket: env.Socket, StoreDir: "/nix/store", Audit: audit.NewWriter(&tp.audit),
		Log: func(msg string) {
			tp.logMu.Lock()
			tp.log = append(tp.log, msg)
			tp.logMu.Unlock()
		},
	})
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tp.socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(tp.socket, 0o666); err != nil {
		t.Fatal(err)
	}
	pl := &publish.PeerListener{UnixListener: l, Allowed: []uint32{0}, Refused: func(uid uint32, err error) {
		tp.refused <- uid
	}}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tp.inflight.Add(1)
		defer tp.inflight.Add(-1)
		p.ServeHTTP(w, r)
	})}
	go srv.Serve(pl)
	t.Cleanup(func() { srv.Close() })
	tp.http = &http.Client{Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", tp.socket)
		},
	}, Timeout: time.Minute}
	return tp
}

// testPath is a store path to upload, with its NAR.
type testPath struct {
	path       string
	nar        []byte
	references []string
}

// newTestPath makes a NAR of one regular file with random contents, for
// a random store path nobody else uses. Its cleanup deletes it from the
// store (after the test's roots are gone) if an upload made it valid.
func newTestPath(t *testing.T, refs ...string) *testPath {
	t.Helper()
	var digest [20]byte
	rand.Read(digest[:])
	contents := make([]byte, 100+mustRandInt(t, 200<<10))
	rand.Read(contents)
	p := &testPath{path: "/nix/store/" + nixbase32.EncodeToString(digest[:]) + "-nixcache-publish-test-" + harness.Nonce(),
		nar: harness.NAR(contents), references: refs}
	t.Cleanup(func() { deletePaths(t, p.path) })
	return p
}

func mustRandInt(t *testing.T, n int64) int64 {
	i, err := rand.Int(rand.Reader, big.NewInt(n))
	if err != nil {
		t.Fatal(err)
	}
	return i.Int64()
}

// deletePaths deletes what the test left in the store: paths it made
// valid, and the partial copies and lock files of uploads the daemon
// refused. Cleanups run last-first, so a path is deleted before the paths
// it references.
func deletePaths(t *testing.T, paths ...string) {
	for _, p := range paths {
		if _, err := os.Lstat(p); err == nil {
			if r := harness.Run(env.Environ(), "nix-store", "--delete", p); r.Err != nil {
				t.Errorf("deleting what the test left in the store: %v", r.Err)
			}
		}
		if err := os.Remove(p + ".lock"); err != nil && !errors.Is(err, fs.ErrNotExist) {
			t.Error(err)
		}
	}
}

// narinfo is the narinfo a client sends for p, NarHash and NarSize from its
// NAR unless the test says otherwise.
func (p *testPath) narinfo(narHash []byte, narSize int) string {
	if narHash == nil {
		h := sha256.Sum256(p.nar)
		narHash = h[:]
	}
	if narSize < 0 {
		narSize = len(p.nar)
	}
	var refs []string
	for _, r := range p.references {
		refs = append(refs, filepath.Base(r))
	}
	return fmt.Sprintf("StorePath: %s\nURL: nar/x.nar\nCompression: none\nNarHash: sha256:%s\nNarSize: %d\nReferences: %s\nSig: someone-else:%s\n",
		p.path, nixbase32.EncodeToString(narHash), narSize, strings.Join(refs, " "),
		"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA==")
}

func (p *testPath) body() []byte { return p.bodyWith(p.narinfo(nil, -1), p.nar) }

func (p *testPath) bodyWith(narinfo string, nar []byte) []byte {
	return append([]byte(narinfo+"\n"), nar...)
}

func (p *testPath) hash() string { return filepath.Base(p.path)[:32] }

// upload sends an upload as client; it returns the status and the line.
func (tp *testPublisher) upload(client, hash string, body io.Reader) (int, string) {
	tp.t.Helper()
	req, err := http.NewRequest(http.MethodPut, "http://publisher/upload/"+hash, body)
	if err != nil {
		tp.t.Fatal(err)
	}
	req.Header.Set(publish.HeaderClient, client)
	req.Header.Set(publish.HeaderKey, tp.keys[client])
	resp, err := tp.http.Do(req)
	if err != nil {
		tp.t.Fatal(err)
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(msg)
}

func (tp *testPublisher) uploadPath(client string, p *testPath) (int, string) {
	return tp.upload(client, p.hash(), bytes.NewReader(p.body()))
}

func (tp *testPublisher) expect(client string, p *testPath, body []byte, want int) string {
	tp.t.Helper()
	status, msg := tp.upload(client, p.hash(), bytes.NewReader(body))
	if status != want {
		tp.t.Fatalf("upload of %s by %s: %d %q, want %d", p.path, client, status, msg, want)
	}
	if strings.Count(msg, "\n") != 1 || !strings.HasSuffix(msg, "\n") {
		tp.t.Errorf("answer %q is not one line", msg)
	}
	return msg
}

func (tp *testPublisher) logged() string {
	tp.logMu.Lock()
	defer tp.logMu.Unlock()
	return strings.Join(tp.log, "\n")
}

// settle waits until no request is in the handler: a client that went
// away does not wait for the publisher to notice.
func (tp *testPublisher) settle() {
	tp.t.Helper()
	for deadline := time.Now().Add(30 * time.Second); tp.inflight.Load() > 0; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			tp.t.Fatal("the publisher is still handling a request after 30s")
		}
	}
}

// assertUntouched checks that nothing is valid or rooted for p.
func (tp *testPublisher) assertUntouched(p *testPath) {
	tp.t.Helper()
	tp.settle()
	if ok, err := dial(tp.t).IsValidPath(p.path); err != nil || ok {
		tp.t.Errorf("%s is valid after a refused upload (err %v)", p.path, err)
	}
	links, _ := filepath.Glob(filepath.Join(tp.roots, "pushed", "*", "*"))
	for _, l := range links {
		if filepath.Base(l) == filepath.Base(p.path) {
			tp.t.Errorf("root %s exists after a refused upload", l)
		}
	}
}

// assertPublished checks that p is valid with its NAR, signed by the
// cache key, and rooted for client.
func (tp *testPublisher) assertPublished(client string, p *testPath) {
	tp.t.Helper()
	info, err := dial(tp.t).QueryPathInfo(p.path)
	if err != nil {
		tp.t.Fatalf("%s after its upload: %v", p.path, err)
	}
	want := sha256.Sum256(p.nar)
	if !bytes.Equal(info.NarHash, want[:]) || info.NarSize != uint64(len(p.nar)) {
		tp.t.Errorf("%s is valid with another NAR", p.path)
	}
	fp, err := nixkey.Fingerprint(p.path, info.NarHash, info.NarSize, info.References)
	if err != nil {
		tp.t.Fatal(err)
	}
	signed := false
	for _, s := range info.Sigs {
		sig, err := nixkey.ParseSignature(s)
		if err != nil {
			tp.t.Errorf("signature %q: %v", s, err)
			continue
		}
		if sig.Name != tp.key.Name() {
			tp.t.Errorf("%s carries a signature by %s, not only the cache's", p.path, sig.Name)
		}
		signed = signed || nixkey.Verify(fp, sig, []nixkey.PublicKey{tp.key.Public()})
	}
	if !signed {
		tp.t.Errorf("%s is not signed by the cache key %s: %v", p.path, tp.key.Name(), info.Sigs)
	}
	link := filepath.Join(tp.roots, "pushed", client, filepath.Base(p.path))
	if target, err := os.Readlink(link); err != nil || target != p.path {
		tp.t.Errorf("root %s: %q, %v; want a link to %s", link, target, err, p.path)
	}
}

func TestPublishImports(t *testing.T) {
	tp := startPublisher(t, publisherOptions{})
	dep := newTestPath(t)
	msg := tp.expect("builder", dep, dep.body(), http.StatusCreated)
	tp.assertPublished("builder", dep)
	t.Logf("answer: %s", msg)

	// A path with a reference to the one before and to itself.
	top := newTestPath(t)
	top.references = []string{dep.path, top.path}
	tp.expect("builder", top, top.body(), http.StatusCreated)
	tp.assertPublished("builder", top)
	info, err := dial(t).QueryPathInfo(top.path)
	if err != nil {
		t.Fatal(err)
	}
	if got := slices.Sorted(slices.Values(info.References)); !slices.Equal(got, slices.Sorted(slices.Values(top.references))) {
		t.Errorf("references %v, want %v", got, top.references)
	}
}

func TestPublishRefusals(t *testing.T) {
	tp := startPublisher(t, publisherOptions{maxNarSize: 300 << 10})
	other := sha256.Sum256([]byte("another NAR"))
	for _, tc := range []struct {
		name   string
		client string
		want   int
		// body builds the request body for p; nil is p's own.
		body func(p *testPath) []byte
		hash func(p *testPath) string
	}{
		{name: "pull role", client: "laptop", want: http.StatusForbidden},
		{name: "not registered", client: "stranger", want: http.StatusForbidden},
		{name: "bad hash", client: "builder", want: http.StatusUnprocessableEntity,
			body: func(p *testPath) []byte { return p.bodyWith(p.narinfo(other[:], -1), p.nar) }},
		{name: "NarSize larger than the NAR", client: "builder", want: http.StatusUnprocessableEntity,
			body: func(p *testPath) []byte { return p.bodyWith(p.narinfo(nil, len(p.nar)+8), p.nar) }},
		{name: "NarSize smaller than the NAR", client: "builder", want: http.StatusUnprocessableEntity,
			body: func(p *testPath) []byte { return p.bodyWith(p.narinfo(nil, len(p.nar)-8), p.nar) }},
		// The NAR matches its narinfo exactly, then more bytes follow:
		// the daemon would take the NAR and drop the rest.
		{name: "bytes beyond NarSize", client: "builder", want: http.StatusUnprocessableEntity,
			body: func(p *testPath) []byte { return append(p.body(), "more"...) }},
		{name: "missing reference", client: "builder", want: http.StatusConflict,
			body: func(p *testPath) []byte {
				q := *p
				q.references = []string{newTestPath(t).path}
				return q.body()
			}},
		{name: "oversize", client: "builder", want: http.StatusRequestEntityTooLarge,
			body: func(p *testPath) []byte { return p.bodyWith(p.narinfo(nil, 300<<10+1), p.nar) }},
		{name: "narinfo without NarHash", client: "builder", want: http.StatusBadRequest,
			body: func(p *testPath) []byte {
				return p.bodyWith(fmt.Sprintf("StorePath: %s\nNarSize: %d\n", p.path, len(p.nar)), p.nar)
			}},
		{name: "another hash part", client: "builder", want: http.StatusBadRequest,
			hash: func(p *testPath) string { return strings.Repeat("0", 32) }},
		{name: "path outside the store", client: "builder", want: http.StatusBadRequest,
			body: func(p *testPath) []byte {
				return p.bodyWith(strings.Replace(p.narinfo(nil, -1), "/nix/store/", "/tmp/store/", 1), p.nar)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := newTestPath(t)
			body, hash := p.body(), p.hash()
			if tc.body != nil {
				body = tc.body(p)
			}
			if tc.hash != nil {
				hash = tc.hash(p)
			}
			status, msg := tp.upload(tc.client, hash, bytes.NewReader(body))
			if status != tc.want {
				t.Errorf("%d %q, want %d", status, msg, tc.want)
			}
			t.Logf("answer: %d %s", status, strings.TrimSpace(msg))
			tp.assertUntouched(p)
		})
	}
}

func TestPublishValidPath(t *testing.T) {
	tp := startPublisher(t, publisherOptions{})
	p := newTestPath(t)
	tp.expect("builder", p, p.body(), http.StatusCreated)

	// The same NAR again, by another client: proof of possession, and a
	// root of its own.
	tp.expect("ci", p, p.body(), http.StatusOK)
	tp.assertPublished("ci", p)
	tp.assertPublished("builder", p)

	// Another NAR for the same path, consistent with its own narinfo.
	q := newTestPath(t)
	q.path = p.path
	tp.expect("ci", q, q.body(), http.StatusConflict)
	tp.assertPublished("builder", p) // still the first NAR

	// The valid NAR with bytes after it proves nothing.
	tp.expect("ci", p, append(p.body(), 0), http.StatusUnprocessableEntity)
}

func TestPublishUntrustedKey(t *testing.T) {
	key, err := nixkey.Generate("not-trusted-" + harness.Nonce())
	if err != nil {
		t.Fatal(err)
	}
	tp := startPublisher(t, publisherOptions{key: &key})
	p := newTestPath(t)
	tp.expect("builder", p, p.body(), http.StatusInternalServerError)
	tp.assertUntouched(p)
	if log := tp.logged(); !strings.Contains(log, "trusted-public-keys") || !strings.Contains(log, key.Public().String()) {
		t.Errorf("the log does not tell the admin to trust the key:\n%s", log)
	}
}

// cutReader ends the body with an error after n bytes, as a client that
// goes away does.
type cutReader struct {
	r io.Reader
	n int64
}

var errCut = errors.New("cut")

func (c *cutReader) Read(p []byte) (int, error) {
	if c.n <= 0 {
		return 0, errCut
	}
	if int64(len(p)) > c.n {
		p = p[:c.n]
	}
	n, err := c.r.Read(p)
	c.n -= int64(n)
	return n, err
}

func TestPublishCutUpload(t *testing.T) {
	tp := startPublisher(t, publisherOptions{})
	p := newTestPath(t)
	body := p.body()
	narinfo := len(body) - len(p.nar)
	cuts := []int64{
		mustRandInt(t, int64(narinfo)),                       // in the narinfo
		int64(narinfo) + mustRandInt(t, int64(len(p.nar)-1)), // in the NAR
		int64(len(body) - 1),                                 // the last byte missing
	}
	for _, cut := range cuts {
		req, err := http.NewRequest(http.MethodPut, "http://publisher/upload/"+p.hash(), &cutReader{bytes.NewReader(body), cut})
		if err != nil {
			t.Fatal(err)
		}
		req.ContentLength = int64(len(body))
		req.Header.Set(publish.HeaderClient, "builder")
		req.Header.Set(publish.HeaderKey, tp.keys["builder"])
		resp, err := tp.http.Do(req)
		if err == nil {
			resp.Body.Close()
			t.Errorf("cut at %d of %d: answered %s", cut, len(body), resp.Status)
		}
		tp.assertUntouched(p)
	}
	tp.expect("builder", p, body, http.StatusCreated)
	tp.assertPublished("builder", p)
}

func TestPublishConcurrent(t *testing.T) {
	tp := startPublisher(t, publisherOptions{})
	t.Run("same NAR", func(t *testing.T) {
		p := newTestPath(t)
		statuses := make([]int, 4)
		var wg sync.WaitGroup
		for i := range statuses {
			wg.Go(func() {
				statuses[i], _ = tp.uploadPath([]string{"builder", "ci"}[i%2], p)
			})
		}
		wg.Wait()
		// One import; the others prove possession of what it made valid.
		slices.Sort(statuses)
		if !slices.Equal(statuses, []int{http.StatusOK, http.StatusOK, http.StatusOK, http.StatusCreated}) {
			t.Errorf("statuses %v, want one 201 and three 200", statuses)
		}
		tp.assertPublished("builder", p)
		tp.assertPublished("ci", p)
	})
	t.Run("different NARs", func(t *testing.T) {
		p, q := newTestPath(t), newTestPath(t)
		q.path = p.path
		var sp, sq int
		var wg sync.WaitGroup
		wg.Go(func() { sp, _ = tp.uploadPath("builder", p) })
		wg.Go(func() { sq, _ = tp.uploadPath("ci", q) })
		wg.Wait()
		winner, loser := p, "ci"
		if sp != http.StatusCreated {
			winner, loser = q, "builder"
		}
		if got := []int{sp, sq}; !slices.Contains(got, http.StatusCreated) || !slices.Contains(got, http.StatusConflict) {
			t.Fatalf("statuses %v, want one 201 and one 409", got)
		}
		tp.assertPublished(map[string]string{"ci": "builder", "builder": "ci"}[loser], winner)
		if _, err := os.Lstat(filepath.Join(tp.roots, "pushed", loser, filepath.Base(p.path))); err == nil {
			t.Errorf("the refused upload was published for %s", loser)
		}
	})
}

// TestPublishPeerCredentials connects as nobody: the socket lets anyone
// connect, and the publisher closes the connection unread.
func TestPublishPeerCredentials(t *testing.T) {
	tp := startPublisher(t, publisherOptions{})
	p := newTestPath(t)
	errc := make(chan error, 1)
	go func() {
		// Credentials are per thread in the kernel: this thread alone
		// becomes nobody (effective uid, which SO_PEERCRED reports), and
		// it ends with the goroutine, never unlocked.
		runtime.LockOSThread()
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), 65534, ^uintptr(0)); e != 0 {
			errc <- fmt.Errorf("setresuid: %v", e)
			return
		}
		c, err := net.Dial("unix", tp.socket)
		if err != nil {
			errc <- fmt.Errorf("the kernel refused the connection (the socket should let anyone connect): %v", err)
			return
		}
		defer c.Close()
		fmt.Fprintf(c, "PUT /upload/%s HTTP/1.1\r\nHost: publisher\r\nNixcache-Client: builder\r\nNixcache-Key: %s\r\nContent-Length: %d\r\n\r\n",
			p.hash(), tp.keys["builder"], len(p.body()))
		c.Write(p.body())
		c.SetReadDeadline(time.Now().Add(30 * time.Second))
		got, err := io.ReadAll(c)
		if len(got) > 0 {
			errc <- fmt.Errorf("nobody got an answer: %q", got)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatal(err)
	}
	select {
	case uid := <-tp.refused:
		if uid != 65534 {
			t.Errorf("refused uid %d, want 65534", uid)
		}
	case <-time.After(10 * time.Second):
		t.Error("the publisher did not report the refused connection")
	}
	tp.assertUntouched(p)
	// Root, the same upload: taken.
	tp.expect("builder", p, p.body(), http.StatusCreated)
}

func TestPublishAudit(t *testing.T) {
	tp := startPublisher(t, publisherOptions{})
	post := func(body string) int {
		resp, err := tp.http.Post("http://publisher/audit", "application/json", strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	good := `{"time":"2026-11-29T05:40:00.123Z","client":"builder","key":"` + tp.keys["builder"] +
		`","role":"push","op":"upload","path":"/nix/store/x","bytes":1234,"status":201,"duration_ms":12.5}`
	for _, bad := range []string{
		strings.Replace(good, `"bytes"`, `"secret":"x","bytes"`, 1), // unknown field
		good + `{}`,  // trailing data
		good + "\nx", // trailing data
		strings.Replace(good, `"upload"`, `"shell"`, 1), // unknown op
		`[]`,
	} {
		if s := post(bad); s != http.StatusBadRequest {
			t.Errorf("record %q: %d, want 400", bad, s)
		}
	}
	if tp.audit.Len() != 0 {
		t.Fatalf("refused records were written: %q", tp.audit.String())
	}
	if s := post(good); s != http.StatusNoContent {
		t.Fatalf("a good record: %d, want 204", s)
	}
	lines := strings.Split(tp.audit.String(), "\n")
	if len(lines) != 2 || lines[1] != "" || !strings.Contains(lines[0], `"client":"builder"`) {
		t.Errorf("audit log %q, want one line", tp.audit.String())
	}
}

// The daemon client refuses what it cannot send in frames and closes the
// connection when a NAR goes wrong half way.
func TestAddToStoreNarClosesOnMismatch(t *testing.T) {
	p := newTestPath(t)
	c := dial(t)
	h := sha256.Sum256(p.nar)
	info := &daemon.PathInfo{Path: p.path, NarHash: h[:], NarSize: uint64(len(p.nar))}
	err := c.AddToStoreNar(info, io.MultiReader(bytes.NewReader(p.nar), strings.NewReader("x")))
	var mismatch *daemon.NarMismatchError
	if !errors.As(err, &mismatch) {
		t.Fatalf("a NAR longer than NarSize: %v", err)
	}
	if _, err := c.IsValidPath(p.path); err == nil {
		t.Error("the connection is still usable after a NAR was cut off")
	}
	if ok, _ := dial(t).IsValidPath(p.path); ok {
		t.Errorf("%s is valid", p.path)
	}
}
