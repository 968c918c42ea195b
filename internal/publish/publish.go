// Package publish is the privileged half of uploads (docs/uploads.md): the
// publisher holds the cache's secret key, checks each upload that serve
// relays, signs it, imports it through the Nix daemon as an untrusted user
// and publishes it with a root per client. It is also the audit log's one
// writer. It answers HTTP/1.1 on a Unix socket whose peers PeerListener
// has checked.
package publish

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nixcache/nixcache/internal/audit"
	"github.com/nixcache/nixcache/internal/nixkey"
	"github.com/nixcache/nixcache/internal/registry"
)

// Defaults of the publisher's flags.
const (
	DefaultMaxNarSize = 4 << 30
	DefaultSocket     = "/run/nixcache/publisher.sock"
	DefaultRoots      = "/nix/var/nix/gcroots/nixcache"
)

// Config is what a Publisher needs.
type Config struct {
	// Registry is the clients registry file, read again when it changes.
	Registry string
	// Key signs every imported path.
	Key nixkey.SecretKey
	// Roots is ROOTS: links go to ROOTS/pushed/CLIENT/BASENAME.
	Roots string
	// MaxNarSize is the largest NarSize accepted.
	MaxNarSize uint64
	// DaemonSocket is the Nix daemon's socket.
	DaemonSocket string
	// StoreDir is the store's directory, /nix/store.
	StoreDir string
	// Audit is the audit log; nil discards the records.
	Audit *audit.Writer
	// Log receives what the server's admin needs (why a 500 happened);
	// nil discards it.
	Log func(msg string)
}

// Publisher is the http.Handler for the publisher's socket.
type Publisher struct {
	cfg Config

	pathsMu sync.Mutex
	paths   map[string]*pathLock // uploads in progress, by store path

	regMu   sync.Mutex
	regSeen os.FileInfo
	reg     *registry.Registry
	regErr  error
}

// New returns a Publisher for cfg.
func New(cfg Config) *Publisher {
	if cfg.StoreDir == "" {
		cfg.StoreDir = "/nix/store"
	}
	if cfg.MaxNarSize == 0 {
		cfg.MaxNarSize = DefaultMaxNarSize
	}
	if cfg.Audit == nil {
		cfg.Audit = audit.NewWriter(io.Discard)
	}
	return &Publisher{cfg: cfg}
}

func (p *Publisher) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	// PUT /upload/HASH names the hash part the client uploaded to, which
	// StorePath must have; PUT /upload leaves it to the narinfo.
	hash, isUpload := strings.CutPrefix(r.URL.Path, "/upload/")
	if r.URL.Path == "/upload" {
		isUpload = true
	}
	switch {
	case isUpload && r.Method == http.MethodPut:
		start := time.Now()
		body := &countingBody{ReadCloser: r.Body}
		r.Body = body
		rec := audit.Record{Client: r.Header.Get(HeaderClient), Key: r.Header.Get(HeaderKey), Op: audit.OpUpload}
		if validHashPart(hash) {
			rec.Path = p.cfg.StoreDir + "/" + hash
		}
		a := p.upload(r, hash, &rec)
		// An upload that changed the server (imported, or published on
		// proof) is logged here, by the process that did it, whatever
		// became of the one that asked: serve may be gone (a client that
		// hangs up once its NAR is sent), and an import nobody logged
		// would escape a stolen key's cleanup. serve logs the rest, with
		// the bytes that crossed the channel (AuditsUpload).
		if AuditsUpload(a.status) {
			rec.Time, rec.Bytes, rec.Status = time.Now().UTC(), body.n, a.status
			rec.Duration = float64(time.Since(start).Microseconds()) / 1000
			if err := p.cfg.Audit.Write(rec); err != nil {
				p.logf("cannot write the audit log: %v (the record: %+v)", err, rec)
			}
		}
		answer(w, a.status, a.msg)
	case r.URL.Path == "/audit" && r.Method == http.MethodPost:
		p.audit(w, r)
	case isUpload || r.URL.Path == "/audit":
		allow := "PUT"
		if !isUpload {
			allow = "POST"
		}
		w.Header().Set("Allow", allow)
		answer(w, http.StatusMethodNotAllowed, r.Method+" is not allowed here")
	default:
		answer(w, http.StatusNotFound, "the publisher answers PUT /upload/HASH and POST /audit only")
	}
}

// answer writes the one line a person can act on.
func answer(w http.ResponseWriter, status int, msg string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	if status != http.StatusNoContent {
		io.WriteString(w, msg+"\n")
	}
}

func (p *Publisher) logf(format string, args ...any) {
	if p.cfg.Log != nil {
		p.cfg.Log(fmt.Sprintf(format, args...))
	}
}

// audit writes one record, decoded strictly (audit.Decode), as one line.
func (p *Publisher) audit(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(io.LimitReader(r.Body, audit.MaxLine+1))
	if err != nil {
		answer(w, http.StatusBadRequest, "reading the audit record: "+err.Error())
		return
	}
	rec, err := audit.Decode(body)
	if err != nil {
		answer(w, http.StatusBadRequest, err.Error())
		return
	}
	if err := p.cfg.Audit.Write(rec); err != nil {
		p.logf("cannot write the audit log: %v", err)
		answer(w, http.StatusInternalServerError, "the audit log cannot be written; details are in the publisher's log")
		return
	}
	answer(w, http.StatusNoContent, "")
}

// registry returns the registry, read again only when the file changed
// (as serve's stillRegistered does).
func (p *Publisher) registry() (*registry.Registry, error) {
	p.regMu.Lock()
	defer p.regMu.Unlock()
	st, err := os.Stat(p.cfg.Registry)
	if err != nil {
		return nil, fmt.Errorf("the clients registry: %w", err)
	}
	if s := p.regSeen; s != nil && st.ModTime().Equal(s.ModTime()) && st.Size() == s.Size() && os.SameFile(st, s) {
		return p.reg, p.regErr
	}
	p.regSeen = st
	p.reg, p.regErr = registry.Load(p.cfg.Registry)
	return p.reg, p.regErr
}

// countingBody counts the bytes of an upload read: the audit record's
// bytes received.
type countingBody struct {
	io.ReadCloser
	n int64
}

func (c *countingBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n += int64(n)
	return n, err
}

// AuditsUpload says whether the publisher writes the audit record of an
// upload it answered with status: 200 and 201, the uploads that changed
// the server.
func AuditsUpload(status int) bool {
	return status == http.StatusOK || status == http.StatusCreated
}
