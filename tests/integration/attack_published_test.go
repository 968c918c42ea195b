//go:build harness

package integration_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/nixcache/nixcache/internal/binarycache"
)

// Attacks on published mode by a push key: each tries to make a path that
// nobody published visible to every client (docs/uploads.md: "anything else
// is 404, to every role"). The channel's handler runs in published mode over
// the roots of a real publisher, in front of the real daemon.

// relay is serve's side of the publisher for a handler in a test: uploads go
// to the test publisher as the push client builder.
type relay struct {
	tp     *testPublisher
	client string
}

func (r relay) Upload(_ context.Context, hash string, body io.Reader) (int, string) {
	return r.tp.upload(r.client, hash, body)
}

// publishedCache is the channel's handler in published mode over tp's roots,
// taking uploads from builder (a push client) through tp.
func publishedCache(t *testing.T, tp *testPublisher) *httptest.Server {
	h := cacheHandler(t)
	h.Published = &binarycache.Published{Roots: tp.roots}
	h.Uploads = relay{tp, "builder"}
	h.MayUpload = func() bool { return true }
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

// symlinkNAR is the NAR of a symlink to target.
func symlinkNAR(target string) []byte {
	var b bytes.Buffer
	str := func(s string) {
		var n [8]byte
		binary.LittleEndian.PutUint64(n[:], uint64(len(s)))
		b.Write(n[:])
		b.WriteString(s)
		b.Write(make([]byte, (8-len(s)%8)%8))
	}
	for _, s := range []string{"nix-archive-1", "(", "type", "symlink", "target", target, ")"} {
		str(s)
	}
	return b.Bytes()
}

// A push key uploads a store path that is a symlink to an unpublished path.
// The publisher roots the upload; the root must publish the upload's
// closure, not what its contents point to (Nix's garbage collector reads a
// root the same way: the link's target, never through a store path).
func TestAttackStoreSymlinkDoesNotPublishItsTarget(t *testing.T) {
	hidden, err := env.Build(1)
	if err != nil {
		t.Fatal(err)
	}
	tp := startPublisher(t, publisherOptions{})
	srv := publishedCache(t, tp)
	get(t, srv.URL+"/"+hashOf(hidden.Top)+".narinfo", http.StatusNotFound)

	link := newTestPath(t)
	link.nar = symlinkNAR(hidden.Top)
	put(t, srv.URL+binarycache.UploadPrefix+link.hash(), string(link.body()), http.StatusCreated)
	get(t, srv.URL+"/"+link.hash()+".narinfo", http.StatusOK)
	get(t, srv.URL+"/"+hashOf(hidden.Top)+".narinfo", http.StatusNotFound)
}

// A push key uploads a path that names an unpublished valid path as a
// reference: the reference check passes (it is valid), the upload is rooted,
// and its closure would take the unpublished path along. A reference must be
// served to this client, as the missing query says (an unpublished path is
// "missing", to be pushed first, which proves possession).
func TestAttackReferenceDoesNotPublishAnUnpublishedPath(t *testing.T) {
	hidden, err := env.Build(1)
	if err != nil {
		t.Fatal(err)
	}
	tp := startPublisher(t, publisherOptions{})
	srv := publishedCache(t, tp)

	p := newTestPath(t, hidden.Top)
	msg := put(t, srv.URL+binarycache.UploadPrefix+p.hash(), string(p.body()), http.StatusConflict)
	if !strings.Contains(msg, hidden.Top) || !strings.Contains(msg, "push it first") {
		t.Errorf("the refusal %q does not name the reference to push first", msg)
	}
	tp.assertUntouched(p)
	get(t, srv.URL+"/"+hashOf(hidden.Top)+".narinfo", http.StatusNotFound)

	// The answer is the one for a reference that is not valid at all: the
	// refusal tells the attacker nothing about what exists.
	absent := "/nix/store/" + strings.Repeat("3", 32) + "-absent"
	q := newTestPath(t, absent)
	other := put(t, srv.URL+binarycache.UploadPrefix+q.hash(), string(q.body()), http.StatusConflict)
	if strings.ReplaceAll(msg, hidden.Top, "R") != strings.ReplaceAll(strings.ReplaceAll(other, absent, "R"), q.path, p.path) {
		t.Errorf("an unpublished reference is refused with %q, an absent one with %q", msg, other)
	}
}

// A push key proves possession of an unpublished valid path (its NAR is
// public knowledge, say) but claims no references: the path would be
// published, and with it the unpublished paths it really refers to, whose
// NARs the key never had.
func TestAttackProofOfPossessionDoesNotPublishUnprovenReferences(t *testing.T) {
	cl, err := env.Build(2)
	if err != nil {
		t.Fatal(err)
	}
	tp := startPublisher(t, publisherOptions{})
	srv := publishedCache(t, tp)
	info, err := dial(t).QueryPathInfo(cl.Top)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.References) == 0 {
		t.Fatalf("%s refers to nothing; the closure was meant to have two paths", cl.Top)
	}
	var nar bytes.Buffer
	if err := dial(t).NarFromPath(cl.Top, info.NarSize, &nar); err != nil {
		t.Fatal(err)
	}
	top := &testPath{path: cl.Top, nar: nar.Bytes()}
	put(t, srv.URL+binarycache.UploadPrefix+top.hash(), string(top.body()), http.StatusConflict)
	for _, p := range cl.Paths {
		get(t, srv.URL+"/"+hashOf(p)+".narinfo", http.StatusNotFound)
	}

	// Done as a client would, bottom up, each with its own NAR and
	// references: possession of every path is proven, and all are served.
	for _, p := range cl.Paths {
		if p == cl.Top {
			continue
		}
		dep, err := dial(t).QueryPathInfo(p)
		if err != nil {
			t.Fatal(err)
		}
		var b bytes.Buffer
		if err := dial(t).NarFromPath(p, dep.NarSize, &b); err != nil {
			t.Fatal(err)
		}
		dp := &testPath{path: p, nar: b.Bytes(), references: dep.References}
		put(t, srv.URL+binarycache.UploadPrefix+dp.hash(), string(dp.body()), http.StatusOK)
	}
	top.references = info.References
	put(t, srv.URL+binarycache.UploadPrefix+top.hash(), string(top.body()), http.StatusOK)
	for _, p := range cl.Paths {
		get(t, srv.URL+"/"+hashOf(p)+".narinfo", http.StatusOK)
	}
}

// A push key learns whether an unpublished path exists from the 409 of an
// upload over it (that much is unavoidable: the cache cannot pretend to take
// it), but not its NAR hash, which would let it confirm a guess of the
// contents.
func TestAttackConflictDoesNotRevealTheNarHash(t *testing.T) {
	hidden, err := env.Build(1)
	if err != nil {
		t.Fatal(err)
	}
	tp := startPublisher(t, publisherOptions{})
	srv := publishedCache(t, tp)
	info, err := dial(t).QueryPathInfo(hidden.Top)
	if err != nil {
		t.Fatal(err)
	}
	guess := newTestPath(t)
	guess.path = hidden.Top
	msg := put(t, srv.URL+binarycache.UploadPrefix+guess.hash(), string(guess.body()), http.StatusConflict)
	for _, enc := range []string{nixbase32.EncodeToString(info.NarHash), fmt.Sprintf("%x", info.NarHash)} {
		if strings.Contains(msg, enc) {
			t.Errorf("the 409 %q tells the NAR hash of the unpublished %s", msg, hidden.Top)
		}
	}
	if sum := sha256.Sum256(guess.nar); bytes.Equal(sum[:], info.NarHash) {
		t.Fatal("the guess is the real NAR")
	}
	if !strings.Contains(tp.logged(), nixbase32.EncodeToString(info.NarHash)) {
		t.Errorf("the publisher's log does not say which NAR is valid: %q", tp.logged())
	}
}
