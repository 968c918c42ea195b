package publish

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/nixcache/nixcache/internal/audit"
	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/nixkey"
	"github.com/nixcache/nixcache/internal/registry"
)

// Headers serve sets on PUT /upload.
const (
	HeaderClient = "Nixcache-Client"
	HeaderKey    = "Nixcache-Key"
)

// result is an upload's answer: a status and its one line.
type result struct {
	status int
	msg    string
}

func fail(status int, format string, args ...any) result {
	return result{status, fmt.Sprintf(format, args...)}
}

// upload is the import of docs/uploads.md, steps 2 to 8 (step 1 is
// PeerListener's).
//
// rec is the upload's audit record, which it fills in as it learns: the
// client's role, the store path.
func (p *Publisher) upload(r *http.Request, hash string, rec *audit.Record) result {
	// 2. A registered client, with this very key, and the push role.
	name, fp := r.Header.Get(HeaderClient), r.Header.Get(HeaderKey)
	reg, err := p.registry()
	if err != nil {
		p.logf("upload refused: %v", err)
		return fail(http.StatusServiceUnavailable, "the cache cannot read its clients registry; details are in its log")
	}
	client, ok := findClient(reg, name, fp)
	if !ok {
		// Not a name or key for the log: whoever asked is not a client.
		rec.Client, rec.Key = "", ""
		return fail(http.StatusForbidden, "client %q with key %s is not in the cache's registry", name, fp)
	}
	rec.Role = string(client.Role)
	if !client.Role.Allows(registry.Push) {
		return fail(http.StatusForbidden, "client %s may only pull: ask the cache's admin for the push role (nixcache clients set-role %s push)", name, name)
	}

	// 3. The narinfo, then the limit, before a byte of NAR is read.
	body := bufio.NewReaderSize(r.Body, 64<<10)
	text, err := readNarinfo(body)
	if errors.Is(err, errNarinfoTooLong) {
		return fail(http.StatusBadRequest, "%v", err)
	}
	if err != nil {
		return fail(http.StatusBadRequest, "reading the narinfo: %v", err)
	}
	c, err := parseNarinfo(text, p.cfg.StoreDir)
	if err != nil {
		return fail(http.StatusBadRequest, "%v", err)
	}
	// The record names the path the narinfo names, even one refused
	// below for another hash part: it is what the client tried.
	rec.Path = c.Path
	base := filepath.Base(c.Path)
	if hash != "" && base[:hashPartLen] != hash {
		return fail(http.StatusBadRequest, "the narinfo is for %s, not for the hash part %q it was uploaded to", c.Path, hash)
	}
	if c.NarSize > p.cfg.MaxNarSize {
		return fail(http.StatusRequestEntityTooLarge, "NarSize %d of %s is over the cache's limit of %d bytes", c.NarSize, c.Path, p.cfg.MaxNarSize)
	}

	// One daemon connection for the whole import: the temporary root it
	// holds keeps the path alive until its link exists. It outlives the
	// request's context: once the NAR is read, the daemon makes the path
	// valid whether or not serve still waits for the answer, and the
	// import must go on to its root. A client gone mid-NAR ends the
	// import all the same: the body's read fails.
	conn, err := daemon.Dial(context.WithoutCancel(r.Context()), p.cfg.DaemonSocket)
	if err != nil {
		p.logf("upload of %s by %s: %v", c.Path, name, err)
		return fail(http.StatusServiceUnavailable, "the cache's Nix daemon is not reachable; details are in its log")
	}
	defer conn.Close()

	// 4. Every reference but the path itself is valid.
	var others []string
	for _, ref := range c.References {
		if ref != c.Path {
			others = append(others, ref)
		}
	}
	if len(others) > 0 {
		valid, err := conn.QueryValidPaths(others)
		if err != nil {
			return p.failed(c.Path, name, err)
		}
		isValid := make(map[string]bool, len(valid))
		for _, v := range valid {
			isValid[v] = true
		}
		for _, ref := range others {
			if !isValid[ref] {
				return fail(http.StatusConflict, "reference %s of %s is not valid on the cache: push it first", ref, c.Path)
			}
		}
	}

	// Uploads of one path take turns: the second finds the first's path
	// valid and proves possession (200) instead of importing it again.
	defer p.lockPath(c.Path)()

	// 5. A valid path: prove possession, or refuse another NAR.
	if err := conn.AddTempRoot(c.Path); err != nil {
		return p.failed(c.Path, name, err)
	}
	have, err := conn.QueryPathInfo(c.Path)
	if err == nil {
		return p.already(conn, client.Name, c, have, body)
	}
	if !errors.Is(err, daemon.ErrNotValid) {
		return p.failed(c.Path, name, err)
	}

	// 6. The cache vouches, nobody else: the client's Sig lines were never
	// read.
	fingerprint, err := nixkey.Fingerprint(c.Path, c.NarHash, c.NarSize, c.References)
	if err != nil {
		return fail(http.StatusBadRequest, "%v", err)
	}
	info := &daemon.PathInfo{
		Path: c.Path, Deriver: c.Deriver, NarHash: c.NarHash, References: c.References,
		NarSize: c.NarSize, CA: c.CA, Sigs: []string{p.cfg.Key.Sign(fingerprint).String()},
	}

	// 7. The import, the NAR streamed, counted and hashed on its way.
	err = conn.AddToStoreNar(info, body)
	var mismatch *daemon.NarMismatchError
	var readErr *daemon.NarReadError
	var remote *daemon.RemoteError
	switch {
	case errors.As(err, &mismatch):
		return fail(http.StatusUnprocessableEntity, "the NAR does not match the narinfo of %s: %v", c.Path, mismatch)
	case errors.As(err, &readErr):
		p.logf("upload of %s by %s cut short: %v", c.Path, name, readErr)
		return fail(http.StatusBadRequest, "the upload of %s was cut short: %v", c.Path, readErr.Err)
	case errors.As(err, &remote) && lacksTrustedSignature(remote.Message):
		p.logf("the Nix daemon refused %s signed by the cache's key %s: add %s to trusted-public-keys (or the key file to secret-key-files) in the server's nix.conf and restart nix-daemon",
			c.Path, p.cfg.Key.Name(), p.cfg.Key.Public().String())
		return fail(http.StatusInternalServerError, "the cache's Nix daemon does not trust the cache's key; the admin's fix is in the publisher's log")
	case err != nil:
		return p.failed(c.Path, name, err)
	}
	// Another process (nix copy on the server, another publisher) may have
	// added the path meanwhile: the daemon then drops this NAR unread. Only
	// the NAR that is valid now counts.
	have, err = conn.QueryPathInfo(c.Path)
	if err != nil {
		return p.failed(c.Path, name, err)
	}
	if !bytes.Equal(have.NarHash, c.NarHash) || have.NarSize != c.NarSize {
		return p.conflict(name, c.Path, have)
	}

	// 8. Publish, the daemon's temporary root still held.
	if err := p.publish(client.Name, c.Path); err != nil {
		p.logf("publishing %s for %s: %v", c.Path, name, err)
		return fail(http.StatusInternalServerError, "the cache imported %s but could not publish it; details are in its log", c.Path)
	}
	return result{http.StatusCreated, "imported " + c.Path + ", signed by " + p.cfg.Key.Name()}
}

// already handles step 5: the NAR is hashed as it is read and must be the
// valid path's own.
func (p *Publisher) already(conn *daemon.Conn, client string, c *claim, have *daemon.PathInfo, nar io.Reader) result {
	h := sha256.New()
	// One byte more than either size: a stream that reaches it is too long
	// for both, so a NAR of have.NarSize bytes has also ended.
	n, err := io.Copy(h, io.LimitReader(nar, int64(max(c.NarSize, have.NarSize))+1))
	if err != nil {
		return fail(http.StatusBadRequest, "the upload of %s was cut short: %v", c.Path, err)
	}
	got := h.Sum(nil)
	if uint64(n) == have.NarSize && bytes.Equal(got, have.NarHash) {
		// The NAR proves possession of this path alone. Publishing it
		// publishes its closure: references the client did not name (and
		// so never showed it may have) are refused, as serve checks in
		// published mode that those it names are served to it.
		if !sameSet(c.References, have.References) {
			p.logf("upload of %s by %s: the valid path refers to %v, the upload's narinfo to %v", c.Path, client, have.References, c.References)
			return fail(http.StatusConflict, "%s is valid on the cache with other references than the narinfo's", c.Path)
		}
		if err := p.publish(client, c.Path); err != nil {
			p.logf("publishing %s for %s: %v", c.Path, client, err)
			return fail(http.StatusInternalServerError, "the cache could not publish %s; details are in its log", c.Path)
		}
		return result{http.StatusOK, c.Path + " was already valid with this NAR; now published for " + client}
	}
	if uint64(n) != c.NarSize || !bytes.Equal(got, c.NarHash) {
		return fail(http.StatusUnprocessableEntity, "the NAR does not match the narinfo of %s", c.Path)
	}
	return p.conflict(client, c.Path, have)
}

// conflict is the 409 for an upload over a valid path with another NAR.
// The valid NAR's hash goes to the log only: the client may not be served
// the path (published mode), and a hash confirms a guess of its contents.
func (p *Publisher) conflict(client, path string, have *daemon.PathInfo) result {
	p.logf("upload of %s by %s: the path is valid with the NAR sha256:%s (%d bytes)", path, client, nixbase32.EncodeToString(have.NarHash), have.NarSize)
	return fail(http.StatusConflict, "%s is valid on the cache with another NAR", path)
}

// sameSet says whether a and b hold the same paths.
func sameSet(a, b []string) bool {
	as, bs := slices.Clone(a), slices.Clone(b)
	slices.Sort(as)
	slices.Sort(bs)
	return slices.Equal(slices.Compact(as), slices.Compact(bs))
}

// lacksTrustedSignature recognises the daemon's refusal of a path no key it
// trusts has signed: "lacks a valid signature" (Nix 2.4 to 2.19), "lacks a
// signature by a trusted key" (later).
func lacksTrustedSignature(msg string) bool {
	return strings.Contains(msg, "lacks a valid signature") || strings.Contains(msg, "lacks a signature by a trusted key")
}

// failed is a 500 or 503 whose details go to the log only.
func (p *Publisher) failed(path, client string, err error) result {
	p.logf("upload of %s by %s: %v", path, client, err)
	if errors.Is(err, context.Canceled) {
		return fail(http.StatusServiceUnavailable, "the upload of %s was cancelled", path)
	}
	return fail(http.StatusInternalServerError, "the cache failed to import %s; details are in its log", path)
}

// publish makes ROOTS/pushed/CLIENT/BASENAME point to path, atomically: a
// link under a temporary name, renamed into place.
func (p *Publisher) publish(client, path string) error {
	if registry.ValidateName(client) != nil {
		return fmt.Errorf("client name %q cannot name a directory", client)
	}
	dir := filepath.Join(p.cfg.Roots, "pushed", client)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	var b [8]byte
	rand.Read(b[:])
	base := filepath.Base(path)
	tmp := filepath.Join(dir, "."+base+".tmp-"+hex.EncodeToString(b[:]))
	if err := os.Symlink(path, tmp); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, base)); err != nil {
		os.Remove(tmp)
		return err
	}
	return nil
}

// lockPath waits until no other upload of path is in progress here; the
// returned function lets the next one go.
func (p *Publisher) lockPath(path string) (unlock func()) {
	p.pathsMu.Lock()
	if p.paths == nil {
		p.paths = map[string]*pathLock{}
	}
	l := p.paths[path]
	if l == nil {
		l = &pathLock{}
		p.paths[path] = l
	}
	l.waiters++
	p.pathsMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		p.pathsMu.Lock()
		if l.waiters--; l.waiters == 0 {
			delete(p.paths, path)
		}
		p.pathsMu.Unlock()
	}
}

type pathLock struct {
	mu      sync.Mutex
	waiters int // under Publisher.pathsMu
}

// findClient is the registry's client called name whose key has the
// fingerprint fp.
func findClient(reg *registry.Registry, name, fp string) (registry.Client, bool) {
	for _, c := range reg.Clients() {
		if c.Name == name {
			return c, c.Fingerprint() == fp
		}
	}
	return registry.Client{}, false
}

// validHashPart says whether s is a store path's hash part (nix32).
func validHashPart(s string) bool {
	if len(s) != hashPartLen {
		return false
	}
	_, err := nixbase32.DecodeString(s)
	return err == nil
}
