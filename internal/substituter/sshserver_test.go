package substituter

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/klauspost/compress/zstd"
	"github.com/nixcache/nixcache/internal/binarycache"
	"github.com/nixcache/nixcache/internal/sshconf"
)

// cacheServer is an SSH server on loopback that does what the cache
// account's `nixcache serve` does with a channel running ChannelCommand:
// binarycache.ServeConn, here with files from memory instead of a daemon.
// The SSH side is x/crypto/ssh's real server; what sshd adds (accounts,
// ForceCommand) is exercised by the harness tests in tests/e2e.
type cacheServer struct {
	t        *testing.T
	hostKey  ssh.Signer
	config   *ssh.ServerConfig
	files    *cacheFiles
	listener net.Listener
	addr     string

	mu    sync.Mutex
	conns []net.Conn
	// logins counts successful SSH logins.
	logins   int
	channels int // channels that ran the channel command
}

// cacheFiles is the cache's content: small files by path, and NARs that
// are generated as they are read, so that a large one takes no memory.
type cacheFiles struct {
	mu    sync.Mutex
	small map[string]string
	nars  map[string]int64
	// encoding is a Content-Encoding sent with every NAR, asked for or not;
	// "zstd" NARs are really compressed.
	encoding string
	// inflate is how many bytes more than its size a zstd NAR decodes to:
	// a hostile cache's bomb.
	inflate int64
	// asked is every path requested, in order.
	asked []string
	// writes answers PUTs and POSTs (uploads, missing queries); nil
	// refuses them.
	writes http.Handler
}

func (f *cacheFiles) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if names, ok := strings.CutPrefix(r.URL.Path, binarycache.NarsPrefix); ok {
		f.serveNars(w, r, strings.Split(names, ","))
		return
	}
	f.mu.Lock()
	f.asked = append(f.asked, r.Method+" "+r.URL.RequestURI())
	if r.Method == http.MethodPut || r.Method == http.MethodPost {
		writes := f.writes
		f.mu.Unlock()
		if writes == nil {
			http.Error(w, "this cache takes no uploads", http.StatusMethodNotAllowed)
			return
		}
		writes.ServeHTTP(w, r)
		return
	}
	body, small := f.small[r.URL.Path]
	size, isNAR := f.nars[r.URL.Path]
	if hash, ok := strings.CutPrefix(r.URL.Path, binarycache.ClosurePrefix); ok {
		body, small = f.closureLocked(hash)
	}
	f.mu.Unlock()
	switch {
	case small:
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		io.WriteString(w, body)
	case isNAR && f.encoding == "zstd":
		// As nixcache serve: compressed, with no length.
		w.Header().Set("Content-Encoding", "zstd")
		w.Header().Set("Content-Type", "application/x-nix-nar")
		if r.Method == http.MethodGet {
			enc, _ := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest))
			io.Copy(enc, io.LimitReader(&pattern{}, size+f.inflate))
			enc.Close()
		}
	case isNAR:
		if f.encoding != "" {
			w.Header().Set("Content-Encoding", f.encoding)
		}
		w.Header().Set("Content-Type", "application/x-nix-nar")
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
		if r.Method == http.MethodGet {
			io.Copy(w, io.LimitReader(&pattern{}, size))
		}
	default:
		http.NotFound(w, r)
	}
}

// serveNars answers a batch as nixcache serve does (binarycache.NarsPrefix);
// each NAR is recorded as asked for alone, so that counts mean NARs
// fetched.
func (f *cacheFiles) serveNars(w http.ResponseWriter, r *http.Request, names []string) {
	f.mu.Lock()
	sizes := make([]int64, len(names))
	for i, name := range names {
		f.asked = append(f.asked, r.Method+" /nar/"+name)
		size, ok := f.nars["/nar/"+name]
		if !ok {
			size = -1
		}
		sizes[i] = size
	}
	encoding, inflate := f.encoding, f.inflate
	f.mu.Unlock()
	var out io.Writer = w
	if encoding != "" {
		w.Header().Set("Content-Encoding", encoding)
	}
	if encoding == "zstd" {
		enc, _ := zstd.NewWriter(w, zstd.WithEncoderLevel(zstd.SpeedFastest))
		defer enc.Close()
		out = enc
	} else {
		inflate = 0
	}
	for i, name := range names {
		if sizes[i] < 0 {
			fmt.Fprintf(out, "%s -\n", name)
			continue
		}
		fmt.Fprintf(out, "%s %d\n", name, sizes[i])
		io.Copy(out, io.LimitReader(&pattern{}, sizes[i]+inflate))
	}
}

// closureLocked is what nixcache serve answers at ClosurePrefix+hash: the
// narinfos of the path and of everything it refers to, each followed by a
// blank line.
func (f *cacheFiles) closureLocked(hash string) (string, bool) {
	var b strings.Builder
	seen := map[string]bool{}
	queue := []string{hash}
	for len(queue) > 0 {
		h := queue[0]
		queue = queue[1:]
		if seen[h] {
			continue
		}
		seen[h] = true
		info, ok := f.small["/"+h+".narinfo"]
		if !ok {
			if h == hash {
				return "", false
			}
			continue
		}
		b.WriteString(info + "\n")
		for _, line := range strings.Split(info, "\n") {
			if refs, ok := strings.CutPrefix(line, "References: "); ok {
				for _, ref := range strings.Fields(refs) {
					queue = append(queue, ref[:storeHashLen])
				}
			}
		}
	}
	return b.String(), true
}

func (f *cacheFiles) requests() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.asked...)
}

func (f *cacheFiles) count(prefix string) int {
	n := 0
	for _, a := range f.requests() {
		if strings.HasPrefix(a, prefix) {
			n++
		}
	}
	return n
}

// pattern is an endless stream of the bytes 0..250, which a reader can
// check at any offset.
type pattern struct{ off int64 }

func (p *pattern) Read(b []byte) (int, error) {
	for i := range b {
		b[i] = byte((p.off + int64(i)) % 251)
	}
	p.off += int64(len(b))
	return len(b), nil
}

func newCacheServer(t *testing.T, clientKey ssh.PublicKey) *cacheServer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	hostKey, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	s := &cacheServer{t: t, hostKey: hostKey, files: &cacheFiles{
		small: map[string]string{"/nix-cache-info": "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 30\n"},
		nars:  map[string]int64{},
	}}
	s.config = &ssh.ServerConfig{
		PublicKeyCallback: func(_ ssh.ConnMetadata, k ssh.PublicKey) (*ssh.Permissions, error) {
			if sshconf.SameKey(k, clientKey) {
				return nil, nil
			}
			return nil, errors.New("unknown key")
		},
	}
	s.config.AddHostKey(hostKey)
	s.start("127.0.0.1:0")
	t.Cleanup(s.stop)
	return s
}

func (s *cacheServer) start(addr string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		s.t.Fatal(err)
	}
	s.listener, s.addr = l, l.Addr().String()
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			s.mu.Lock()
			s.conns = append(s.conns, nc)
			s.mu.Unlock()
			go s.serve(nc)
		}
	}()
}

// stop closes the listener and every connection, as a cache that goes
// down would.
func (s *cacheServer) stop() {
	s.listener.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.conns {
		c.Close()
	}
	s.conns = nil
}

func (s *cacheServer) restart() { s.start(s.addr) }

func (s *cacheServer) serve(nc net.Conn) {
	_, chans, reqs, err := ssh.NewServerConn(nc, s.config)
	if err != nil {
		return
	}
	s.mu.Lock()
	s.logins++
	s.mu.Unlock()
	go ssh.DiscardRequests(reqs)
	for nch := range chans {
		if nch.ChannelType() != "session" {
			nch.Reject(ssh.UnknownChannelType, "session only")
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		go func() {
			for req := range creqs {
				var exec struct{ Command string }
				if req.Type != "exec" || ssh.Unmarshal(req.Payload, &exec) != nil || exec.Command != ChannelCommand {
					req.Reply(false, nil)
					continue
				}
				req.Reply(true, nil)
				s.mu.Lock()
				s.channels++
				s.mu.Unlock()
				go func() {
					binarycache.ServeConn(ch, s.files)
					ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{0}))
					ch.Close()
				}()
			}
		}()
	}
}

func (s *cacheServer) target() sshconf.Target {
	host, port, _ := net.SplitHostPort(s.addr)
	n, _ := strconv.Atoi(port)
	return sshconf.Target{User: "nix-ssh", Host: host, Port: n}
}

// pinFile writes a known_hosts file as join leaves it, pinning key for s.
func pinFile(t *testing.T, s *cacheServer, key ssh.PublicKey) string {
	t.Helper()
	dir := t.TempDir()
	known := filepath.Join(dir, "nixcache_known_hosts")
	line := knownhosts.Line([]string{s.target().KnownHostsName()}, key)
	if err := os.WriteFile(known, []byte(line+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	return known
}

func newSigner(t *testing.T) ssh.Signer {
	t.Helper()
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

// storeHash and narFile make names of the contract's shapes.
func storeHash(i int) string { return fmt.Sprintf("%032d", i) }

func narName(i int) string { return storeHash(i) + "-" + fmt.Sprintf("%052d", i) + ".nar" }

// addPath puts a path with its narinfo and NAR into the cache.
func (s *cacheServer) addPath(i int, size int64, refs ...int) {
	var names []string
	for _, r := range refs {
		names = append(names, storeHash(r)+"-p"+strconv.Itoa(r))
	}
	info := fmt.Sprintf("StorePath: /nix/store/%s-p%d\nURL: nar/%s\nCompression: none\nFileSize: %d\nNarSize: %d\nReferences: %s\n",
		storeHash(i), i, narName(i), size, size, strings.Join(names, " "))
	s.files.mu.Lock()
	defer s.files.mu.Unlock()
	s.files.small["/"+storeHash(i)+".narinfo"] = info
	s.files.nars["/nar/"+narName(i)] = size
}
