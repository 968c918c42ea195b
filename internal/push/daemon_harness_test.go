//go:build harness

package push_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/nixcache/nixcache/internal/push"
	"github.com/nixcache/nixcache/tests/harness"
)

// These tests push from the harness's real nix-daemon (real NARs, real
// references) to a substituter played by an httptest server that checks
// each upload as the cache does: the narinfo, the NAR against its hash and
// size, and every reference valid before the path.

var env *harness.Env

func TestMain(m *testing.M) { os.Exit(harness.RunTests(m, &env)) }

type checkingCache struct {
	t     *testing.T
	mu    sync.Mutex
	has   map[string]bool
	order []string
}

func (c *checkingCache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/nixcache-missing":
		data, _ := io.ReadAll(r.Body)
		c.mu.Lock()
		defer c.mu.Unlock()
		for _, p := range strings.Fields(string(data)) {
			if !c.has[p] {
				io.WriteString(w, p+"\n")
			}
		}
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/nixcache-upload/"):
		br := bufio.NewReader(r.Body)
		fields := map[string]string{}
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				http.Error(w, "no end of narinfo", http.StatusBadRequest)
				return
			}
			if line == "\n" {
				break
			}
			k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), ": ")
			fields[k] = v
		}
		sp := fields["StorePath"]
		if !strings.HasPrefix(filepath.Base(sp), strings.TrimPrefix(r.URL.Path, "/nixcache-upload/")+"-") {
			http.Error(w, "another hash part", http.StatusBadRequest)
			return
		}
		c.mu.Lock()
		for _, ref := range strings.Fields(fields["References"]) {
			if full := "/nix/store/" + ref; full != sp && !c.has[full] {
				c.mu.Unlock()
				http.Error(w, "reference "+full+" is not valid on the cache", http.StatusConflict)
				return
			}
		}
		c.mu.Unlock()
		size, _ := strconv.ParseInt(fields["NarSize"], 10, 64)
		h := sha256.New()
		n, err := io.Copy(h, br)
		if err != nil || n != size {
			http.Error(w, "NAR size", http.StatusUnprocessableEntity)
			return
		}
		if got := "sha256:" + nixbase32.EncodeToString(h.Sum(nil)); got != fields["NarHash"] {
			http.Error(w, "NAR hash "+got+" is not "+fields["NarHash"], http.StatusUnprocessableEntity)
			return
		}
		c.mu.Lock()
		c.has[sp] = true
		c.order = append(c.order, sp)
		c.mu.Unlock()
		w.WriteHeader(http.StatusCreated)
	default:
		http.Error(w, "no", http.StatusNotFound)
	}
}

func startCache(t *testing.T, has ...string) (*checkingCache, string) {
	c := &checkingCache{t: t, has: map[string]bool{}}
	for _, p := range has {
		c.has[p] = true
	}
	srv := httptest.NewServer(c)
	t.Cleanup(srv.Close)
	return c, srv.URL
}

// A closure from the real daemon goes up whole, bottom up, each NAR
// matching its hash; a second push finds nothing to do.
func TestPushClosureFromTheDaemon(t *testing.T) {
	cl, err := env.Build(12)
	if err != nil {
		t.Fatal(err)
	}
	// ./result, as nix-build leaves it.
	result := filepath.Join(t.TempDir(), "result")
	if err := os.Symlink(cl.Top, result); err != nil {
		t.Fatal(err)
	}
	cache, url := startCache(t)
	var last push.Progress
	res, err := push.Push(context.Background(), push.Options{
		To: url, Paths: []string{result}, Recursive: true, Jobs: 4, Socket: env.Socket,
		Progress: func(p push.Progress) { last = p },
	})
	if err != nil {
		t.Fatalf("%v: %+v", err, res.Failed)
	}
	if len(res.Pushed) != 12 || len(res.Skipped) != 0 || len(res.Failed) != 0 {
		t.Fatalf("pushed %d, skipped %d, failed %d", len(res.Pushed), len(res.Skipped), len(res.Failed))
	}
	// The chain: each path refers to the one before.
	want := slices.Clone(cl.Paths)
	if !slices.Equal(cache.order[len(cache.order)-1:], []string{cl.Top}) {
		t.Errorf("top was not last: %v", cache.order)
	}
	slices.Sort(want)
	if got := slices.Sorted(slices.Values(cache.order)); !slices.Equal(got, want) {
		t.Errorf("uploaded %v, want %v", got, want)
	}
	if last.Pushed != 12 || last.Sent != last.Bytes || last.Bytes != res.Bytes || res.Bytes == 0 {
		t.Errorf("last progress %+v, result bytes %d", last, res.Bytes)
	}
	res, err = push.Push(context.Background(), push.Options{To: url, Paths: []string{cl.Top}, Recursive: true, Socket: env.Socket})
	if err != nil || len(res.Pushed) != 0 || len(res.Skipped) != 12 {
		t.Errorf("second push: %v, pushed %d, skipped %d", err, len(res.Pushed), len(res.Skipped))
	}
}

// Without --recursive, a path whose references the cache lacks is refused
// before anything is uploaded; with them in the cache it goes alone.
func TestPushWithoutRecursiveNeedsReferencesInTheCache(t *testing.T) {
	cl, err := env.Build(3)
	if err != nil {
		t.Fatal(err)
	}
	cache, url := startCache(t)
	_, err = push.Push(context.Background(), push.Options{To: url, Paths: []string{cl.Top}, Socket: env.Socket})
	var mr *push.MissingReferencesError
	if !errors.As(err, &mr) || mr.Path != cl.Top || len(mr.Missing) != 1 {
		t.Fatalf("%v, want the top's reference missing", err)
	}
	if len(cache.order) != 0 {
		t.Fatalf("uploaded %v before refusing", cache.order)
	}
	// The top and its reference together, named on the command line.
	var ref string
	for _, p := range cl.Paths {
		if p == mr.Missing[0] {
			ref = p
		}
	}
	res, err := push.Push(context.Background(), push.Options{To: url, Paths: []string{cl.Top, ref}, Socket: env.Socket})
	var mr2 *push.MissingReferencesError
	if !errors.As(err, &mr2) || mr2.Path != ref {
		t.Fatalf("%v, %+v: want the reference's own reference missing", err, res)
	}
	cache.mu.Lock()
	for _, p := range cl.Paths {
		if p != cl.Top && p != ref {
			cache.has[p] = true
		}
	}
	cache.mu.Unlock()
	res, err = push.Push(context.Background(), push.Options{To: url, Paths: []string{cl.Top, ref}, Socket: env.Socket})
	if err != nil || len(res.Pushed) != 2 || !slices.Equal(cache.order, []string{ref, cl.Top}) {
		t.Fatalf("%v: pushed %v, order %v", err, res.Pushed, cache.order)
	}
}

// A path the daemon does not have is refused, before the substituter is
// asked anything.
func TestPushInvalidPath(t *testing.T) {
	cache, url := startCache(t)
	_, err := push.Push(context.Background(), push.Options{To: url, Paths: []string{"/nix/store/00000000000000000000000000000000-missing"}, Socket: env.Socket})
	if err == nil || !strings.Contains(err.Error(), "is not valid in the store") {
		t.Fatalf("%v", err)
	}
	if len(cache.order) != 0 {
		t.Fatal("uploaded")
	}
}

// With no substituter listening, the error says it could not be reached.
func TestPushSubstituterNotRunning(t *testing.T) {
	cl, err := env.Build(1)
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = push.Push(context.Background(), push.Options{To: "http://" + addr, Paths: []string{cl.Top}, Socket: env.Socket})
	var ue *push.UnreachableError
	if !errors.As(err, &ue) || !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("%v, want an UnreachableError for connection refused", err)
	}
}
