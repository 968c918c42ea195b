//go:build harness

package integration_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/nixcache/nixcache/internal/audit"
	"github.com/nixcache/nixcache/internal/binarycache"
)

// In published mode the handler serves the closures of what the roots
// point to, and nothing else, in every shape of request; a root added or
// removed counts at once.
func TestPublishedModeServesOnlyRootedClosures(t *testing.T) {
	published, err := env.Build(3)
	if err != nil {
		t.Fatal(err)
	}
	hidden, err := env.Build(2)
	if err != nil {
		t.Fatal(err)
	}
	roots := t.TempDir()
	if err := os.Symlink(published.Top, filepath.Join(roots, "app")); err != nil {
		t.Fatal(err)
	}
	all := httptest.NewServer(cacheHandler(t))
	defer all.Close()
	h := cacheHandler(t)
	h.Published = &binarycache.Published{Roots: roots}
	srv := httptest.NewServer(h)
	defer srv.Close()

	for _, p := range published.Paths {
		get(t, srv.URL+"/"+hashOf(p)+".narinfo", http.StatusOK)
	}
	hiddenInfo := get(t, all.URL+"/"+hashOf(hidden.Top)+".narinfo", http.StatusOK)
	narURL := field(hiddenInfo, "URL")
	get(t, srv.URL+"/"+hashOf(hidden.Top)+".narinfo", http.StatusNotFound)
	get(t, srv.URL+"/"+narURL, http.StatusNotFound)
	get(t, srv.URL+binarycache.ClosurePrefix+hashOf(hidden.Top), http.StatusNotFound)
	batch := get(t, srv.URL+binarycache.NarsPrefix+strings.TrimPrefix(narURL, "nar/"), http.StatusOK)
	if batch != strings.TrimPrefix(narURL, "nar/")+" -\n" {
		t.Errorf("a batch served an unpublished NAR: %.80q", batch)
	}
	closure := get(t, srv.URL+binarycache.ClosurePrefix+hashOf(published.Top), http.StatusOK)
	if n := strings.Count(closure, "StorePath: "); n != len(published.Paths) {
		t.Errorf("the published closure has %d narinfos, want %d", n, len(published.Paths))
	}

	// Published by a root in a directory of its own (as the publisher
	// roots uploads), then unpublished.
	sub := filepath.Join(roots, "pushed", "build-01")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(sub, filepath.Base(hidden.Top))
	if err := os.Symlink(hidden.Top, link); err != nil {
		t.Fatal(err)
	}
	get(t, srv.URL+"/"+hashOf(hidden.Top)+".narinfo", http.StatusOK)
	get(t, srv.URL+"/"+narURL, http.StatusOK)
	if err := os.Remove(link); err != nil {
		t.Fatal(err)
	}
	get(t, srv.URL+"/"+hashOf(hidden.Top)+".narinfo", http.StatusNotFound)
}

// The missing query lists what the cache does not serve, in the order
// asked: invalid paths always, valid ones only when unpublished.
func TestMissingListsWhatIsNotServed(t *testing.T) {
	cl, err := env.Build(2)
	if err != nil {
		t.Fatal(err)
	}
	absent := "/nix/store/" + strings.Repeat("1", 32) + "-absent"
	ask := cl.Paths[0] + "\n" + absent + "\n" + cl.Paths[1] + "\n"
	all := httptest.NewServer(cacheHandler(t))
	defer all.Close()
	if got := post(t, all.URL+binarycache.MissingPath, ask, http.StatusOK); got != absent+"\n" {
		t.Errorf("missing, whole store: %q, want only %q", got, absent)
	}
	h := cacheHandler(t)
	h.Published = &binarycache.Published{Roots: t.TempDir()}
	pub := httptest.NewServer(h)
	defer pub.Close()
	if got := post(t, pub.URL+binarycache.MissingPath, ask, http.StatusOK); got != ask {
		t.Errorf("missing, published mode, nothing published: %q, want all of %q", got, ask)
	}
	post(t, all.URL+binarycache.MissingPath, "/etc/passwd\n", http.StatusBadRequest)
	post(t, all.URL+binarycache.MissingPath, strings.Repeat(absent+"\n", binarycache.MaxMissing+1), http.StatusRequestEntityTooLarge)
}

type recordingUploader struct {
	mu    sync.Mutex
	calls []string
}

func (u *recordingUploader) Upload(_ context.Context, hash string, body io.Reader) (int, string) {
	b, _ := io.ReadAll(body)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.calls = append(u.calls, hash+":"+string(b))
	return http.StatusCreated, "imported"
}

// A client whose role is pull never reaches the uploader; a push client
// does, with the body as sent (zstd removed).
func TestUploadsNeedThePushRole(t *testing.T) {
	hash := strings.Repeat("2", 32)
	body := "StorePath: /nix/store/" + hash + "-x\n\nNAR"
	up := &recordingUploader{}
	h := cacheHandler(t)
	srv := httptest.NewServer(h)
	defer srv.Close()
	put(t, srv.URL+binarycache.UploadPrefix+hash, body, http.StatusForbidden)
	h.Uploads = up
	role := "pull"
	h.MayUpload = func() bool { return role == "push" }
	put(t, srv.URL+binarycache.UploadPrefix+hash, body, http.StatusForbidden)
	if len(up.calls) != 0 {
		t.Fatalf("a pull client's upload reached the uploader: %q", up.calls)
	}
	role = "push"
	put(t, srv.URL+binarycache.UploadPrefix+hash, body, http.StatusCreated)
	if want := []string{hash + ":" + body}; !slices.Equal(up.calls, want) {
		t.Errorf("uploader got %q, want %q", up.calls, want)
	}
	put(t, srv.URL+binarycache.UploadPrefix+"not-a-hash", body, http.StatusBadRequest)
}

// Every request is one audit record, each NAR of a batch too, and what
// published mode hides is logged as refused.
func TestEachRequestIsAudited(t *testing.T) {
	cl, err := env.Build(2)
	if err != nil {
		t.Fatal(err)
	}
	hidden, err := env.Build(1)
	if err != nil {
		t.Fatal(err)
	}
	roots := t.TempDir()
	if err := os.Symlink(cl.Top, filepath.Join(roots, "app")); err != nil {
		t.Fatal(err)
	}
	var recs []audit.Record
	h := cacheHandler(t)
	h.Published = &binarycache.Published{Roots: roots}
	h.Audit = func(r audit.Record) { recs = append(recs, r) }
	srv := httptest.NewServer(h)
	defer srv.Close()

	info := get(t, srv.URL+"/"+hashOf(cl.Top)+".narinfo", http.StatusOK)
	nar := field(info, "URL")
	get(t, srv.URL+"/"+nar, http.StatusOK)
	other := field(get(t, srv.URL+"/"+hashOf(cl.Paths[0])+".narinfo", http.StatusOK), "URL")
	get(t, srv.URL+binarycache.NarsPrefix+strings.TrimPrefix(nar, "nar/")+","+strings.TrimPrefix(other, "nar/"), http.StatusOK)
	get(t, srv.URL+"/"+hashOf(hidden.Top)+".narinfo", http.StatusNotFound)
	put(t, srv.URL+binarycache.UploadPrefix+hashOf(hidden.Top), "x", http.StatusForbidden)

	type seen struct {
		op, request, path string
		status            int
	}
	var got []seen
	for _, r := range recs {
		got = append(got, seen{r.Op, r.Request, r.Path, r.Status})
		if r.Duration < 0 {
			t.Errorf("negative duration: %+v", r)
		}
	}
	want := []seen{
		{"narinfo", "", cl.Top, 200},
		{"nar", "", cl.Top, 200},
		{"narinfo", "", cl.Paths[0], 200},
		{"nar", "", cl.Top, 200},
		{"nar", "", cl.Paths[0], 200},
		{"refused", "narinfo", hidden.Top, 404},
		{"refused", "upload", "/nix/store/" + hashOf(hidden.Top), 403},
	}
	if !slices.Equal(got, want) {
		t.Errorf("audit records:\n got %v\nwant %v", got, want)
	}
}

func hashOf(storePath string) string { return filepath.Base(storePath)[:32] }

func post(t *testing.T, url, body string, want int) string {
	t.Helper()
	return send(t, http.MethodPost, url, body, want)
}

func put(t *testing.T, url, body string, want int) string {
	t.Helper()
	return send(t, http.MethodPut, url, body, want)
}

func send(t *testing.T, method, url, body string, want int) string {
	t.Helper()
	req, err := http.NewRequest(method, url, strings.NewReader(body))
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
		t.Fatal(err)
	}
	if resp.StatusCode != want {
		t.Fatalf("%s %s: %s (%q), want %d", method, url, resp.Status, b, want)
	}
	return string(b)
}

// A roots directory made after the first request counts at once, as a root
// added to one that existed does.
func TestPublishedModeSeesARootsDirectoryMadeLater(t *testing.T) {
	cl, err := env.Build(1)
	if err != nil {
		t.Fatal(err)
	}
	roots := filepath.Join(t.TempDir(), "roots")
	h := cacheHandler(t)
	h.Published = &binarycache.Published{Roots: roots}
	srv := httptest.NewServer(h)
	defer srv.Close()
	get(t, srv.URL+"/"+hashOf(cl.Top)+".narinfo", http.StatusNotFound)
	if err := os.Mkdir(roots, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(cl.Top, filepath.Join(roots, "app")); err != nil {
		t.Fatal(err)
	}
	get(t, srv.URL+"/"+hashOf(cl.Top)+".narinfo", http.StatusOK)
}
