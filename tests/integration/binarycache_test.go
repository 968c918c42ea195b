//go:build harness

package integration_test

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/internal/binarycache"
	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/tests/harness"
)

func cacheHandler(t *testing.T) *binarycache.Handler {
	t.Helper()
	h := &binarycache.Handler{
		Dial: func(ctx context.Context) (*daemon.Conn, error) { return daemon.Dial(ctx, env.Socket) },
		Logf: t.Logf,
	}
	t.Cleanup(func() { h.Close() })
	return h
}

// The narinfo is what Nix itself writes into a file:// cache with
// compression=none, field for field; only the URL names the NAR differently.
func TestNarInfoIsWhatNixWrites(t *testing.T) {
	cl, err := env.Build(3)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if r := harness.Run(env.Environ(), "nix", "--extra-experimental-features", "nix-command",
		"copy", "--to", "file://"+dir+"?compression=none", cl.Top); r.Err != nil {
		t.Fatal(r.Err)
	}
	srv := httptest.NewServer(cacheHandler(t))
	defer srv.Close()
	for _, p := range cl.Paths {
		hash := filepath.Base(p)[:32]
		want, err := os.ReadFile(filepath.Join(dir, hash+".narinfo"))
		if err != nil {
			t.Fatal(err)
		}
		got := get(t, srv.URL+"/"+hash+".narinfo", http.StatusOK)
		if withoutURL(got) != withoutURL(string(want)) {
			t.Errorf("%s:\nserved:\n%s\nNix writes:\n%s", p, got, want)
		}
		// The NAR is the one Nix wrote, byte for byte.
		nar := get(t, srv.URL+"/"+field(got, "URL"), http.StatusOK)
		wantNar, err := os.ReadFile(filepath.Join(dir, field(string(want), "URL")))
		if err != nil {
			t.Fatal(err)
		}
		if nar != string(wantNar) {
			t.Errorf("%s: the NAR served (%d bytes) is not the one Nix writes (%d bytes)", p, len(nar), len(wantNar))
		}
	}
	get(t, srv.URL+"/nix-cache-info", http.StatusOK)
	get(t, srv.URL+"/"+strings.Repeat("0", 32)+".narinfo", http.StatusNotFound)
	get(t, srv.URL+"/nar/"+strings.Repeat("0", 32)+"-"+strings.Repeat("0", 52)+".nar", http.StatusNotFound)
	get(t, srv.URL+"/../etc/passwd", http.StatusNotFound)
}

// Nix substitutes a closure from the handler as from any HTTP binary cache.
func TestNixSubstitutesFromTheHandler(t *testing.T) {
	cl, err := env.Build(4)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(cacheHandler(t))
	defer srv.Close()
	store := filepath.Join(t.TempDir(), "store")
	r := harness.Run(env.Environ(), "nix-store", "--store", store, "--realise", cl.Top,
		"--option", "substituters", srv.URL, "--option", "require-sigs", "false")
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	for _, p := range cl.Paths {
		if r := harness.Run(env.Environ(), "nix-store", "--store", store, "--check-validity", p); r.Err != nil {
			t.Errorf("%s was not substituted: %v", p, r.Err)
		}
	}
}

func get(t *testing.T, url string, status int) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s: %v", url, err)
	}
	if resp.StatusCode != status {
		t.Fatalf("GET %s: %s, want %d", url, resp.Status, status)
	}
	return string(b)
}

func field(narinfo, name string) string {
	for _, l := range strings.Split(narinfo, "\n") {
		if v, ok := strings.CutPrefix(l, name+": "); ok {
			return v
		}
	}
	return ""
}

func withoutURL(narinfo string) string {
	var keep []string
	for _, l := range strings.Split(narinfo, "\n") {
		if !strings.HasPrefix(l, "URL: ") {
			keep = append(keep, l)
		}
	}
	return strings.Join(keep, "\n")
}

// A closure's narinfos come in one answer, each what the narinfo endpoint
// answers for its path, the path's own first.
func TestClosureNarinfosInOneAnswer(t *testing.T) {
	cl, err := env.Build(5)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(cacheHandler(t))
	defer srv.Close()
	topHash := filepath.Base(cl.Top)[:32]
	all := get(t, srv.URL+binarycache.ClosurePrefix+topHash, http.StatusOK)
	blocks := strings.Split(strings.TrimSuffix(all, "\n\n"), "\n\n")
	if len(blocks) != len(cl.Paths) {
		t.Fatalf("%d narinfos for a closure of %d paths:\n%s", len(blocks), len(cl.Paths), all)
	}
	if field(blocks[0], "StorePath") != cl.Top {
		t.Errorf("the first narinfo is %s's, want the top's", field(blocks[0], "StorePath"))
	}
	for _, b := range blocks {
		p := field(b, "StorePath")
		if one := get(t, srv.URL+"/"+filepath.Base(p)[:32]+".narinfo", http.StatusOK); one != b+"\n" {
			t.Errorf("%s in the closure:\n%s\nalone:\n%s", p, b, one)
		}
	}
	get(t, srv.URL+binarycache.ClosurePrefix+strings.Repeat("0", 32), http.StatusNotFound)
}

// Several NARs come in one answer, each as the NAR endpoint sends it, and
// one the cache lacks is named as missing.
func TestNarsInOneAnswer(t *testing.T) {
	cl, err := env.Build(3)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(cacheHandler(t))
	defer srv.Close()
	var names, want []string
	for _, p := range cl.Paths {
		info := get(t, srv.URL+"/"+filepath.Base(p)[:32]+".narinfo", http.StatusOK)
		name := strings.TrimPrefix(field(info, "URL"), "nar/")
		names = append(names, name)
		want = append(want, name+" "+field(info, "NarSize")+"\n"+get(t, srv.URL+"/nar/"+name, http.StatusOK))
	}
	missing := strings.Repeat("0", 32) + "-" + strings.Repeat("0", 52) + ".nar"
	got := get(t, srv.URL+binarycache.NarsPrefix+strings.Join(append(names, missing), ","), http.StatusOK)
	if w := strings.Join(want, "") + missing + " -\n"; got != w {
		t.Errorf("the batch:\n%q\nwant:\n%q", got, w)
	}
	get(t, srv.URL+binarycache.NarsPrefix+strings.Repeat(names[0]+",", binarycache.MaxNarsBatch)+names[0], http.StatusNotFound)
}
