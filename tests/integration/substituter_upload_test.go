//go:build harness

package integration_test

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/nixcache/nixcache/internal/binarycache"
	"github.com/nixcache/nixcache/internal/sshconf"
	"github.com/nixcache/nixcache/internal/substituter"
	"github.com/nixcache/nixcache/tests/harness"
)

// The real `nix copy --to http://127.0.0.1:PORT` against the client's
// substituter: whatever order and names Nix uses for its PUTs, the cache
// receives each path once, as one upload whose NAR is the path's, after
// its references. The cache here is an in-process SSH server answering the
// channel with a recorder (the real serve and publisher are tests/e2e's).
func TestNixCopyThroughTheSubstituter(t *testing.T) {
	cache := newRecordingCache(t)
	url, nixSent := startSubstituter(t, cache)
	for _, compression := range []string{"xz", "none", "zstd", "bzip2"} {
		t.Run(compression, func(t *testing.T) {
			cl, err := env.Build(3)
			if err != nil {
				t.Fatal(err)
			}
			before := len(cache.received())
			sentBefore := len(nixSent.all())
			// A Nix disk cache of its own: what Nix remembers of the
			// store does not leak between runs.
			nixEnv := env.Environ("XDG_CACHE_HOME=" + t.TempDir())
			r := harness.Run(nixEnv, "nix", "copy", "--experimental-features", "nix-command",
				"--to", url+"?compression="+compression, cl.Top)
			if r.Err != nil {
				t.Fatalf("nix copy: %v\n%s", r.Err, r.Stderr)
			}
			// What Nix sent: per path, the NAR file and then its narinfo.
			var narPuts, narinfoPuts int
			for _, req := range nixSent.all()[sentBefore:] {
				t.Log("nix copy sent", req)
				switch {
				case strings.HasPrefix(req, "PUT /nar/"):
					narPuts++
				case strings.HasPrefix(req, "PUT /") && strings.HasSuffix(req, ".narinfo"):
					narinfoPuts++
				}
			}
			if narPuts != len(cl.Paths) || narinfoPuts != len(cl.Paths) {
				t.Errorf("nix copy sent %d NAR files and %d narinfos, want %d each", narPuts, narinfoPuts, len(cl.Paths))
			}
			got := cache.received()[before:]
			if len(got) != len(cl.Paths) {
				t.Fatalf("the cache received %d uploads, want the %d paths of the closure: %v", len(got), len(cl.Paths), got)
			}
			seen := map[string]bool{}
			for _, up := range got {
				for _, ref := range up.refs {
					if ref != up.path && !seen[ref] {
						t.Errorf("%s arrived before its reference %s", up.path, ref)
					}
				}
				seen[up.path] = true
				want := harness.Run(env.Environ(), "nix-store", "--query", "--hash", up.path)
				if want.Err != nil || strings.TrimSpace(want.Stdout) != up.narHash {
					t.Errorf("%s arrived with NAR sha256:%s, the store has %s (%v)", up.path, up.narHash, want.Stdout, want.Err)
				}
			}
			for _, p := range cl.Paths {
				if !seen[p] {
					t.Errorf("%s never arrived", p)
				}
			}
			// Copied again by a Nix that remembers nothing: the cache has
			// the paths now (the substituter forgot the 404s it had seen
			// for them), and nothing is sent again.
			r = harness.Run(env.Environ("XDG_CACHE_HOME="+t.TempDir()), "nix", "copy", "--experimental-features", "nix-command",
				"--to", url+"?compression="+compression, cl.Top)
			if r.Err != nil {
				t.Fatalf("nix copy again: %v\n%s", r.Err, r.Stderr)
			}
			if n := len(cache.received()) - before; n != len(cl.Paths) {
				t.Errorf("copied again, the cache received %d uploads in all, want %d", n, len(cl.Paths))
			}
		})
	}
}

// A NAR of megabytes: curl sends it after "Expect: 100-continue", and the
// substituter compresses it on the wire; the cache gets it whole.
func TestNixCopyOfALargePath(t *testing.T) {
	cache := newRecordingCache(t)
	url, _ := startSubstituter(t, cache)
	file := filepath.Join(t.TempDir(), "large-"+harness.Nonce())
	data := make([]byte, 24<<20)
	for i := range data {
		data[i] = byte(i / 1000)
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	r := harness.Run(env.Environ(), "nix-store", "--add", file)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	path := strings.TrimSpace(r.Stdout)
	r = harness.Run(env.Environ("XDG_CACHE_HOME="+t.TempDir()), "nix", "copy", "--experimental-features", "nix-command",
		"--to", url+"?compression=zstd", path)
	if r.Err != nil {
		t.Fatalf("nix copy: %v\n%s", r.Err, r.Stderr)
	}
	got := cache.received()
	want := harness.Run(env.Environ(), "nix-store", "--query", "--hash", path)
	if len(got) != 1 || got[0].path != path || got[0].narHash != strings.TrimSpace(want.Stdout) {
		t.Fatalf("the cache received %v, want %s with %s", got, path, want.Stdout)
	}
	if got[0].encoding != "zstd" {
		t.Errorf("a NAR that compresses went on the wire as %q, want zstd", got[0].encoding)
	}
}

// recordingCache is the cache's end of the channel: it takes uploads,
// checks each NAR against its narinfo, and serves the paths it took as
// nixcache serve does.
type recordingCache struct {
	t        *testing.T
	hostKey  ssh.Signer
	client   ssh.Signer
	addr     string
	mu       sync.Mutex
	uploads  []receivedUpload
	narinfos map[string]string // by hash part
}

type receivedUpload struct {
	path, narHash, encoding string
	refs                    []string
}

func (u receivedUpload) String() string { return u.path }

func newRecordingCache(t *testing.T) *recordingCache {
	c := &recordingCache{t: t, hostKey: newTestSigner(t), client: newTestSigner(t), narinfos: map[string]string{}}
	config := &ssh.ServerConfig{PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
		if sshconf.SameKey(k, c.client.PublicKey()) {
			return nil, nil
		}
		return nil, fmt.Errorf("unknown key")
	}}
	config.AddHostKey(c.hostKey)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	c.addr = l.Addr().String()
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go c.serve(nc, config)
		}
	}()
	return c
}

func newTestSigner(t *testing.T) ssh.Signer {
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func (c *recordingCache) serve(nc net.Conn, config *ssh.ServerConfig) {
	defer nc.Close()
	_, chans, reqs, err := ssh.NewServerConn(nc, config)
	if err != nil {
		return
	}
	go ssh.DiscardRequests(reqs)
	for nch := range chans {
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		go func() {
			for req := range creqs {
				var exec struct{ Command string }
				if req.Type != "exec" || ssh.Unmarshal(req.Payload, &exec) != nil || exec.Command != substituter.ChannelCommand {
					req.Reply(false, nil)
					continue
				}
				req.Reply(true, nil)
				go func() {
					binarycache.ServeConn(ch, c)
					ch.Close()
				}()
			}
		}()
	}
}

func (c *recordingCache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	switch {
	case p == "/nix-cache-info":
		io.WriteString(w, "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n")
	case strings.HasPrefix(p, binarycache.ClosurePrefix):
		c.mu.Lock()
		info, ok := c.narinfos[strings.TrimPrefix(p, binarycache.ClosurePrefix)]
		c.mu.Unlock()
		if !ok {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, info+"\n")
	case r.Method == http.MethodPut && strings.HasPrefix(p, "/nixcache-upload/"):
		c.upload(w, r, strings.TrimPrefix(p, "/nixcache-upload/"))
	default:
		http.NotFound(w, r)
	}
}

func (c *recordingCache) upload(w http.ResponseWriter, r *http.Request, hash string) {
	body := io.Reader(r.Body)
	if r.Header.Get("Content-Encoding") == "zstd" {
		d, err := zstd.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		defer d.Close()
		body = d
	}
	br := bufio.NewReader(body)
	fields := map[string]string{}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			http.Error(w, "the narinfo is cut short", http.StatusBadRequest)
			return
		}
		if line == "\n" {
			break
		}
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), ": ")
		fields[k] = v
	}
	size, _ := strconv.ParseInt(fields["NarSize"], 10, 64)
	h := sha256.New()
	n, err := io.Copy(h, br)
	narHash := "sha256:" + nixbase32.EncodeToString(h.Sum(nil))
	if err != nil || n != size || narHash != fields["NarHash"] || !strings.HasPrefix(filepath.Base(fields["StorePath"]), hash+"-") {
		http.Error(w, fmt.Sprintf("the NAR does not match the narinfo (%d of %d bytes, %s, %v)", n, size, narHash, err), http.StatusUnprocessableEntity)
		return
	}
	var refs []string
	for _, ref := range strings.Fields(fields["References"]) {
		refs = append(refs, "/nix/store/"+ref)
	}
	c.mu.Lock()
	c.uploads = append(c.uploads, receivedUpload{path: fields["StorePath"], narHash: narHash, encoding: r.Header.Get("Content-Encoding"), refs: refs})
	c.narinfos[hash] = fmt.Sprintf("StorePath: %s\nURL: nar/%s-%s.nar\nCompression: none\nFileSize: %d\nNarHash: %s\nNarSize: %d\nReferences: %s\n",
		fields["StorePath"], hash, strings.TrimPrefix(narHash, "sha256:"), size, narHash, size, fields["References"])
	c.mu.Unlock()
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, "imported\n")
}

func (c *recordingCache) received() []receivedUpload {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]receivedUpload(nil), c.uploads...)
}

// requestLog records the requests Nix sends the substituter.
type requestLog struct {
	mu   sync.Mutex
	reqs []string
}

func (l *requestLog) all() []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]string(nil), l.reqs...)
}

// startSubstituter runs the client's substituter against cache and
// returns its URL and the log of what it was sent.
func startSubstituter(t *testing.T, cache *recordingCache) (string, *requestLog) {
	host, port, _ := net.SplitHostPort(cache.addr)
	n, _ := strconv.Atoi(port)
	target := sshconf.Target{User: "nix-ssh", Host: host, Port: n}
	known := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(known, []byte(knownhosts.Line([]string{target.KnownHostsName()}, cache.hostKey.PublicKey())+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	up, err := substituter.NewUpstream(substituter.UpstreamConfig{Target: target, Signer: cache.client, KnownHosts: known, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if err := up.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	go up.Run(ctx)
	srv, err := substituter.NewServer(up, substituter.Options{SpoolDir: t.TempDir(), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	log := &requestLog{}
	hs := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		log.mu.Lock()
		log.reqs = append(log.reqs, r.Method+" "+r.URL.Path)
		log.mu.Unlock()
		srv.ServeHTTP(w, r)
	}))
	// The substituter learns who sent an upload from the connection.
	hs.Config.ConnContext = srv.ConnContext
	hs.Start()
	t.Cleanup(hs.Close)
	return hs.URL, log
}
