package substituter

import (
	"bufio"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// A 1 GiB path goes through the substituter twice, once followed from the
// spool while it is prefetched and once streamed from the cache, and the
// substituter's process never holds more than 64 MiB: NARs are streamed,
// never held whole. The substituter runs in a process of its own (this
// test binary again) so that its peak RSS (VmHWM) is its alone.
func TestMemoryBound(t *testing.T) {
	if os.Getenv("NIXCACHE_MEMORY_CHILD") != "" {
		return
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	keyFile := filepath.Join(t.TempDir(), "key")
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	cache := newCacheServer(t, signer.PublicKey())
	cache.addPath(1, memoryNAR)

	child := exec.Command(os.Args[0], "-test.run=^TestMemoryChild$")
	child.Env = append(os.Environ(),
		"NIXCACHE_MEMORY_CHILD="+cache.addr,
		"NIXCACHE_MEMORY_KEY="+keyFile,
		"NIXCACHE_MEMORY_KNOWN="+pinFile(t, cache, cache.hostKey.PublicKey()),
		"NIXCACHE_MEMORY_SPOOL="+t.TempDir())
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	child.Stderr = os.Stderr
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	defer child.Process.Kill()
	lines := bufio.NewScanner(stdout)
	url := ""
	for lines.Scan() {
		if u, ok := strings.CutPrefix(lines.Text(), "listening "); ok {
			url = u
			break
		}
	}
	if url == "" {
		t.Fatal("the substituter did not start")
	}
	get := func(path string) *http.Response {
		t.Helper()
		resp, err := http.Get(url + path)
		if err != nil {
			t.Fatal(err)
		}
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %s", path, resp.Status)
		}
		return resp
	}
	get("/" + storeHash(1) + ".narinfo").Body.Close()
	start := time.Now()
	for _, how := range []string{"from the spool", "streamed"} {
		resp := get("/nar/" + narName(1))
		n, err := io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || n != memoryNAR {
			t.Fatalf("NAR %s: %d bytes, %v", how, n, err)
		}
	}
	t.Logf("two %d MiB NARs in %s", memoryNAR>>20, time.Since(start))
	if n := cache.files.count("GET /nar/"); n != 2 {
		t.Errorf("the cache was asked for the NAR %d times, want 2 (prefetch, then the second request)", n)
	}
	stdin.Close()
	var hwm int64
	for lines.Scan() {
		if v, ok := strings.CutPrefix(lines.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			hwm = kb << 10
		}
	}
	if err := child.Wait(); err != nil {
		t.Fatal(err)
	}
	t.Logf("the substituter's peak RSS: %d MiB", hwm>>20)
	if hwm == 0 || hwm > maxRSS {
		t.Errorf("peak RSS %d bytes, want at most %d", hwm, maxRSS)
	}
}

// TestMemoryChild is TestMemoryBound's substituter: it serves until its
// standard input closes, then prints its peak RSS.
func TestMemoryChild(t *testing.T) {
	addr := os.Getenv("NIXCACHE_MEMORY_CHILD")
	if addr == "" {
		return
	}
	signer, err := ReadSigner(os.Getenv("NIXCACHE_MEMORY_KEY"))
	if err != nil {
		t.Fatal(err)
	}
	target := (&cacheServer{addr: addr}).target()
	up, err := NewUpstream(UpstreamConfig{Target: target, Signer: signer, KnownHosts: os.Getenv("NIXCACHE_MEMORY_KNOWN"), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := up.Connect(ctx); err != nil {
		t.Fatal(err)
	}
	go up.Run(ctx)
	srv, err := NewServer(up, Options{SpoolDir: os.Getenv("NIXCACHE_MEMORY_SPOOL"), SpoolBytes: 2 * memoryNAR})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go http.Serve(l, srv)
	fmt.Printf("listening http://%s\n", l.Addr())
	io.Copy(io.Discard, os.Stdin)
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			fmt.Println(line)
		}
	}
}
