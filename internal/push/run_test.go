package push

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nixcache/nixcache/internal/daemon"
)

// nar is the fake NAR of a path: its size in bytes of a pattern of its own.
func nar(info *daemon.PathInfo) []byte {
	pat := []byte(name(info.Path) + ";")
	return bytes.Repeat(pat, int(info.NarSize)/len(pat)+1)[:info.NarSize]
}

// fakeDaemon dumps the fake NARs, like a daemon connection: it writes the
// whole NAR or fails, and after a failure it is spent.
type fakeDaemon struct {
	infos  map[string]*daemon.PathInfo
	broken map[string]bool // dumping these fails halfway
	spent  bool
	closed *atomic.Int32
}

func (f *fakeDaemon) NarFromPath(p string, size uint64, w io.Writer) error {
	if f.spent {
		return errors.New("used after a failure")
	}
	data := nar(f.infos[p])
	if uint64(len(data)) != size {
		return fmt.Errorf("size %d, want %d", size, len(data))
	}
	if f.broken[p] {
		w.Write(data[:size/2])
		f.spent = true
		return errors.New("daemon died")
	}
	// In small writes, as the daemon's dump arrives.
	for len(data) > 0 {
		n := min(len(data), 4096)
		if _, err := w.Write(data[:n]); err != nil {
			f.spent = true
			return err
		}
		data = data[n:]
	}
	return nil
}

func (f *fakeDaemon) Close() error { f.closed.Add(1); return nil }

// fakeCache plays the substituter and the cache behind it, as
// docs/uploads.md has them answer.
type fakeCache struct {
	t  *testing.T
	mu sync.Mutex
	// has: valid on the cache; order: uploads that succeeded, in order.
	has     map[string]bool
	order   []string
	answers map[string]int // an upload of this name gets this status
	early   bool           // answer failures before reading the NAR
	// inflight and most count concurrent uploads.
	inflight, most int
	missingCalls   [][]string
	uploads        int
}

func newFakeCache(t *testing.T, has ...string) *fakeCache {
	c := &fakeCache{t: t, has: map[string]bool{}, answers: map[string]int{}}
	for _, h := range has {
		c.has[h] = true
	}
	return c
}

func (c *fakeCache) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodPost && r.URL.Path == "/nixcache-missing":
		data, _ := io.ReadAll(r.Body)
		paths := strings.Fields(string(data))
		c.mu.Lock()
		c.missingCalls = append(c.missingCalls, paths)
		var out strings.Builder
		for _, p := range paths {
			if !c.has[p] {
				out.WriteString(p + "\n")
			}
		}
		c.mu.Unlock()
		io.WriteString(w, out.String())
	case r.Method == http.MethodPut && strings.HasPrefix(r.URL.Path, "/nixcache-upload/"):
		c.upload(w, r)
	default:
		http.Error(w, "no such endpoint", http.StatusNotFound)
	}
}

func (c *fakeCache) upload(w http.ResponseWriter, r *http.Request) {
	c.mu.Lock()
	c.uploads++
	c.inflight++
	c.most = max(c.most, c.inflight)
	c.mu.Unlock()
	defer func() { c.mu.Lock(); c.inflight--; c.mu.Unlock() }()
	hash := strings.TrimPrefix(r.URL.Path, "/nixcache-upload/")
	br := bufio.NewReader(r.Body)
	fields := map[string]string{}
	head := 0
	for {
		line, err := br.ReadString('\n')
		head += len(line)
		if err != nil {
			http.Error(w, "narinfo: "+err.Error(), http.StatusBadRequest)
			return
		}
		if line == "\n" {
			break
		}
		k, v, _ := strings.Cut(strings.TrimSuffix(line, "\n"), ": ")
		fields[k] = v
	}
	sp := fields["StorePath"]
	if hashPart(sp) != hash {
		http.Error(w, "the narinfo names another hash part", http.StatusBadRequest)
		return
	}
	if status := c.answers[name(sp)]; status != 0 && c.early {
		http.Error(w, fmt.Sprintf("refused %s\nsecond line", name(sp)), status)
		return
	}
	c.mu.Lock()
	for _, ref := range strings.Fields(fields["References"]) {
		full := "/nix/store/" + ref
		if full != sp && !c.has[full] {
			c.mu.Unlock()
			http.Error(w, "reference "+full+" is not valid on the cache", http.StatusConflict)
			return
		}
	}
	c.mu.Unlock()
	size, _ := strconv.ParseUint(fields["NarSize"], 10, 64)
	got, err := io.ReadAll(br)
	if err != nil || uint64(len(got)) != size {
		http.Error(w, "short NAR", http.StatusUnprocessableEntity)
		return
	}
	if want := nar(&daemon.PathInfo{Path: sp, NarSize: size}); !bytes.Equal(got, want) {
		http.Error(w, "the NAR does not match", http.StatusUnprocessableEntity)
		return
	}
	if r.ContentLength != int64(head)+int64(size) {
		c.t.Errorf("%s: Content-Length %d, want %d", name(sp), r.ContentLength, int64(head)+int64(size))
	}
	if status := c.answers[name(sp)]; status != 0 {
		http.Error(w, "refused "+name(sp), status)
		return
	}
	// Long enough for uploads to overlap.
	time.Sleep(2 * time.Millisecond)
	c.mu.Lock()
	c.has[sp] = true
	c.order = append(c.order, name(sp))
	c.mu.Unlock()
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, "imported\n")
}

// runFake runs the uploads of infos against cache with jobs workers and
// fake daemon connections.
func runFake(t *testing.T, cache *fakeCache, infos []*daemon.PathInfo, jobs int, broken ...string) (Result, *atomic.Int32, int) {
	t.Helper()
	srv := httptest.NewServer(cache)
	t.Cleanup(srv.Close)
	base, err := ParseURL(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	p, err := newPlan(infos)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]*daemon.PathInfo{}
	for _, i := range infos {
		byPath[i.Path] = i
	}
	br := map[string]bool{}
	for _, b := range broken {
		br[storePath(b)] = true
	}
	var closed atomic.Int32
	var dials atomic.Int32
	var lastSeen Progress
	r := &runner{
		sub:  &substituter{base: base, client: srv.Client()},
		plan: p,
		jobs: jobs,
		dial: func(context.Context) (narSource, error) {
			dials.Add(1)
			return &fakeDaemon{infos: byPath, broken: br, closed: &closed}, nil
		},
		progress: func(pr Progress) { lastSeen = pr },
	}
	res := r.run(context.Background())
	if lastSeen.Pushed != len(infos) || lastSeen.Total != len(infos) {
		t.Errorf("last progress %+v, want all %d paths done", lastSeen, len(infos))
	}
	if int(closed.Load()) != int(dials.Load()) {
		t.Errorf("%d daemon connections opened, %d closed", dials.Load(), closed.Load())
	}
	return res, &dials, int(dials.Load())
}

func names(paths []string) []string {
	var out []string
	for _, p := range paths {
		out = append(out, name(p))
	}
	slices.Sort(out)
	return out
}

func sized(infos []*daemon.PathInfo, size uint64) []*daemon.PathInfo {
	for _, i := range infos {
		i.NarSize = size
	}
	return infos
}

// A closure goes up in dependency order, several paths at once, each body
// the narinfo, an empty line and the whole NAR; the cache checks each.
func TestRunUploadsInDependencyOrder(t *testing.T) {
	var lines []string
	for i := range 6 {
		lines = append(lines, fmt.Sprintf("w%d: base", i))
	}
	lines = append(lines, "top: w0 w1 w2 w3 w4 w5 mid", "mid: base", "base: glibc", "glibc:")
	infos := sized(graph(lines...), 100_000)
	cache := newFakeCache(t)
	res, _, dials := runFake(t, cache, infos, 4)
	if len(res.Failed) != 0 {
		t.Fatalf("failed: %+v", res.Failed)
	}
	if len(res.Pushed) != len(infos) || res.Bytes != int64(len(infos))*100_000 {
		t.Errorf("pushed %d paths, %d bytes", len(res.Pushed), res.Bytes)
	}
	at := map[string]int{}
	for i, n := range cache.order {
		at[n] = i
	}
	for _, info := range infos {
		for _, r := range info.References {
			if at[name(r)] > at[name(info.Path)] {
				t.Errorf("%s imported before its reference %s", name(info.Path), name(r))
			}
		}
	}
	if cache.most < 2 || cache.most > 4 {
		t.Errorf("at most %d uploads at once, want 2 to 4", cache.most)
	}
	if dials > 4 {
		t.Errorf("%d daemon connections for 4 workers", dials)
	}
}

// A failed upload stops the paths that refer to it, which are reported as
// not pushed with the failure named; the others go on. Each status the
// cache may answer is passed on with its one line.
func TestRunFailureStopsDependentsOnly(t *testing.T) {
	for _, status := range []int{http.StatusConflict, http.StatusInternalServerError, http.StatusUnprocessableEntity} {
		for _, early := range []bool{false, true} {
			t.Run(fmt.Sprintf("%d early=%v", status, early), func(t *testing.T) {
				infos := sized(graph("app: lib", "lib: base", "base:", "other:", "tool: other"), 300_000)
				cache := newFakeCache(t)
				cache.answers["base"] = status
				cache.early = early
				res, _, _ := runFake(t, cache, infos, 2)
				if got := names(res.Pushed); !slices.Equal(got, []string{"other", "tool"}) {
					t.Errorf("pushed %v, want [other tool]", got)
				}
				if len(res.Failed) != 3 {
					t.Fatalf("failed %+v, want base, lib, app", res.Failed)
				}
				for _, f := range res.Failed {
					switch name(f.Path) {
					case "base":
						want := fmt.Sprintf("%d refused base", status)
						if f.Status != status || f.Error != want {
							t.Errorf("base: %d %q, want %q", f.Status, f.Error, want)
						}
					case "lib", "app":
						if f.Status != 0 || !strings.Contains(f.Error, "refers to "+storePath("base")) {
							t.Errorf("%s: %d %q", name(f.Path), f.Status, f.Error)
						}
					default:
						t.Errorf("unexpected failure %+v", f)
					}
				}
				if slices.Contains(cache.order, "lib") || slices.Contains(cache.order, "app") {
					t.Errorf("a dependent of the failed path was uploaded: %v", cache.order)
				}
			})
		}
	}
}

// A 403 means this key may not push at all: the run stops after it instead
// of asking again for every path.
func TestRunStopsAtForbidden(t *testing.T) {
	var lines []string
	for i := range 20 {
		lines = append(lines, fmt.Sprintf("p%d:", i))
	}
	cache := newFakeCache(t)
	for i := range 20 {
		cache.answers[fmt.Sprintf("p%d", i)] = http.StatusForbidden
	}
	cache.early = true
	res, _, _ := runFake(t, cache, sized(graph(lines...), 1000), 2)
	if len(res.Pushed) != 0 || len(res.Failed) != 20 {
		t.Fatalf("pushed %d, failed %d", len(res.Pushed), len(res.Failed))
	}
	if cache.uploads > 2 {
		t.Errorf("%d uploads after a 403, want at most the 2 in flight", cache.uploads)
	}
	forbidden := 0
	for _, f := range res.Failed {
		if f.Status == http.StatusForbidden {
			forbidden++
		} else if !strings.Contains(f.Error, "the run stopped: the cache refused") {
			t.Errorf("%s: %q", name(f.Path), f.Error)
		}
	}
	if forbidden == 0 || forbidden > 2 {
		t.Errorf("%d answers of 403", forbidden)
	}
}

// A daemon that fails in the middle of a NAR fails that upload (the cache
// sees a short body and imports nothing); the worker opens a new
// connection for the next path.
func TestRunDaemonFailure(t *testing.T) {
	infos := sized(graph("a:", "b:", "c:", "d: a"), 200_000)
	cache := newFakeCache(t)
	res, _, dials := runFake(t, cache, infos, 1, "a")
	if got := names(res.Pushed); !slices.Equal(got, []string{"b", "c"}) {
		t.Errorf("pushed %v, want [b c]", got)
	}
	if len(res.Failed) != 2 || !strings.Contains(res.Failed[0].Error, "daemon died") {
		t.Errorf("failed %+v", res.Failed)
	}
	if dials != 2 {
		t.Errorf("%d daemon connections, want 2 (one spent by the failure)", dials)
	}
	if slices.Contains(cache.order, "a") {
		t.Error("the cache imported a truncated NAR")
	}
}

// The missing query goes in batches of at most 10,000 paths, and its
// answer must be what was asked, in order.
func TestMissingBatchesAndChecksTheAnswer(t *testing.T) {
	var paths []string
	for i := range 25_000 {
		paths = append(paths, storePath(fmt.Sprintf("p%d", i)))
	}
	cache := newFakeCache(t, paths[:12_000]...)
	srv := httptest.NewServer(cache)
	defer srv.Close()
	base, _ := ParseURL(srv.URL)
	sub := &substituter{base: base, client: srv.Client()}
	lacks, err := sub.missing(context.Background(), paths)
	if err != nil {
		t.Fatal(err)
	}
	if len(lacks) != 13_000 || lacks[paths[0]] || !lacks[paths[24_999]] {
		t.Errorf("%d missing", len(lacks))
	}
	if len(cache.missingCalls) != 3 || len(cache.missingCalls[0]) != 10_000 {
		t.Errorf("%d requests", len(cache.missingCalls))
	}
	for _, answer := range []string{
		storePath("other") + "\n",         // not asked
		paths[1] + "\n" + paths[0] + "\n", // out of order
		strings.Repeat(paths[0]+"\n", 3),  // repeated, longer than asked
	} {
		srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, answer) }))
		base, _ := ParseURL(srv.URL)
		sub := &substituter{base: base, client: srv.Client()}
		if _, err := sub.missing(context.Background(), paths[:2]); err == nil {
			t.Errorf("answer %q accepted", answer)
		}
		srv.Close()
	}
}

// Without --recursive, references the cache lacks must be among the paths
// pushed; with it, the cache's paths are skipped.
func TestDecide(t *testing.T) {
	infos := graph("app: lib base", "lib: base")
	lacks := map[string]bool{storePath("app"): true, storePath("lib"): true, storePath("base"): true}
	_, _, err := decide(infos, lacks, false)
	var mr *MissingReferencesError
	if !errors.As(err, &mr) || mr.Path != storePath("app") || !slices.Equal(mr.Missing, []string{storePath("base")}) || mr.Others != 1 {
		t.Errorf("%v (%+v), want base missing for app and one other", err, mr)
	}
	delete(lacks, storePath("base"))
	up, skipped, err := decide(infos, lacks, false)
	if err != nil || len(up) != 2 || len(skipped) != 0 {
		t.Errorf("%v, %d to upload, skipped %v", err, len(up), skipped)
	}
	all := graph("app: lib base", "lib: base", "base:")
	up, skipped, err = decide(all, lacks, true)
	if err != nil || len(up) != 2 || !slices.Equal(names(skipped), []string{"base"}) {
		t.Errorf("%v, %d to upload, skipped %v", err, len(up), skipped)
	}
	if got := ask(infos, false); len(got) != 3 {
		t.Errorf("asked about %v, want the paths and their references", got)
	}
}

// Only plain http to loopback: the substituter takes uploads from local
// users only, and nothing else should see them.
func TestParseURL(t *testing.T) {
	for _, ok := range []string{"http://127.0.0.1:37515", "http://[::1]:8080/", "http://localhost:1", "http://127.0.0.2:80/sub"} {
		if _, err := ParseURL(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
	for _, bad := range []string{"https://127.0.0.1:1", "http://10.0.0.1:37515", "http://cache.example:80", "ssh://127.0.0.1", "http://u:p@127.0.0.1:1", "127.0.0.1:37515", "http://127.0.0.1:1/?x=1", "http://0.0.0.0:1"} {
		if _, err := ParseURL(bad); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
	u, _ := ParseURL("http://127.0.0.1:9/x/")
	if u.String() != "http://127.0.0.1:9/x" {
		t.Errorf("%s", u)
	}
}
