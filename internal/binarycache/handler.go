package binarycache

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nixcache/nixcache/internal/audit"

	"github.com/nixcache/nixcache/internal/daemon"
)

// Handler answers Nix's binary-cache requests from a Nix daemon. It holds one
// daemon connection, used one request at a time: an SSH channel carries one
// HTTP/1.1 conversation, whose requests come one after the other.
type Handler struct {
	// Dial connects to the daemon; it is called again after a connection
	// breaks (a NAR interrupted half-way leaves it unusable).
	Dial func(context.Context) (*daemon.Conn, error)
	// Logf reports what the client is not told (the daemon's errors).
	Logf func(format string, args ...any)
	// Published, when set, is all that is served (published mode); other
	// valid paths are answered as absent.
	Published *Published
	// Uploads takes uploads; nil refuses them. MayUpload, when set, is
	// asked before each: the client's role now.
	Uploads   Uploader
	MayUpload func() bool
	// Audit, when set, is given one record per request (per NAR of a
	// batch), with what the handler knows: the operation, the path, the
	// bytes, the status and the duration.
	Audit func(audit.Record)

	mu   sync.Mutex
	conn *daemon.Conn
	// rec is the current request's audit record (requests come one at a
	// time, under mu).
	rec *audit.Record
}

// Close closes the daemon connection.
func (h *Handler) Close() error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.conn == nil {
		return nil
	}
	err := h.conn.Close()
	h.conn = nil
	return err
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h.mu.Lock()
	defer h.mu.Unlock()
	start := time.Now()
	cw := &countingWriter{ResponseWriter: w}
	rec := &audit.Record{}
	h.rec = rec
	defer func() {
		h.rec = nil
		if h.Audit == nil || rec.Op == "" {
			return
		}
		if rec.Bytes == 0 {
			rec.Bytes = cw.n
		}
		rec.Status = cw.status()
		rec.Duration = float64(time.Since(start).Microseconds()) / 1000
		h.Audit(*rec)
	}()
	w = cw
	p := r.URL.Path
	switch {
	case r.Method == http.MethodPut && strings.HasPrefix(p, UploadPrefix) && strings.Count(p, "/") == 2:
		h.upload(w, r, p[len(UploadPrefix):], rec)
		return
	case r.Method == http.MethodPost && p == MissingPath:
		h.missing(w, r, rec)
		return
	case r.Method != http.MethodGet && r.Method != http.MethodHead:
		rec.Op, rec.Request = audit.OpRefused, "other"
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	switch {
	case p == "/nix-cache-info":
		reply(w, r, "text/x-nix-cache-info", CacheInfo)
	case strings.HasSuffix(p, ".narinfo") && strings.Count(p, "/") == 1:
		rec.Op = audit.OpNarinfo
		h.narinfo(w, r, strings.TrimSuffix(p[1:], ".narinfo"))
	case strings.HasPrefix(p, "/nar/") && strings.Count(p, "/") == 2:
		rec.Op = audit.OpNar
		h.nar(w, r, p[len("/nar/"):])
	case strings.HasPrefix(p, ClosurePrefix) && strings.Count(p, "/") == 2:
		rec.Op = audit.OpNarinfo
		h.closure(w, r, p[len(ClosurePrefix):])
	case strings.HasPrefix(p, NarsPrefix) && strings.Count(p, "/") == 2:
		// One record per NAR, written by nars.
		h.nars(w, r, strings.Split(p[len(NarsPrefix):], ","), start)
	default:
		rec.Op, rec.Request = audit.OpRefused, "other"
		http.NotFound(w, r)
	}
}

// countingWriter counts the body bytes of a response and keeps its status.
type countingWriter struct {
	http.ResponseWriter
	n    int64
	code int
}

func (c *countingWriter) WriteHeader(code int) {
	if c.code == 0 {
		c.code = code
	}
	c.ResponseWriter.WriteHeader(code)
}

func (c *countingWriter) Write(p []byte) (int, error) {
	if c.code == 0 {
		c.code = http.StatusOK
	}
	n, err := c.ResponseWriter.Write(p)
	c.n += int64(n)
	return n, err
}

func (c *countingWriter) status() int {
	if c.code == 0 {
		return http.StatusOK
	}
	return c.code
}

// ensureConn connects to the daemon if there is no connection.
func (h *Handler) ensureConn(ctx context.Context) error {
	if h.conn != nil {
		return nil
	}
	// The connection outlives this request: the daemon client closes it
	// when its context ends.
	c, err := h.Dial(context.WithoutCancel(ctx))
	if err != nil {
		return err
	}
	h.conn = c
	return nil
}

// visible says whether a valid path may be served: in published mode,
// whether it is published.
func (h *Handler) visible(path string) (bool, error) {
	if h.Published == nil {
		return true, nil
	}
	ok, err := h.Published.Contains(h.conn, path)
	if err != nil {
		h.dropConn()
	}
	return ok, err
}

func reply(w http.ResponseWriter, r *http.Request, contentType, body string) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodGet {
		io.WriteString(w, body)
	}
}

// lookup finds the valid path with hash part hash that this client may be
// served, or nil.
func (h *Handler) lookup(ctx context.Context, hash string) (*daemon.PathInfo, error) {
	if err := h.ensureConn(ctx); err != nil {
		return nil, err
	}
	path, err := h.conn.QueryPathFromHashPart(hash)
	if err == nil && path == "" {
		return nil, nil
	}
	var info *daemon.PathInfo
	if err == nil {
		info, err = h.conn.QueryPathInfo(path)
	}
	if errors.Is(err, daemon.ErrNotValid) {
		// Collected between the two questions.
		return nil, nil
	}
	if err != nil {
		h.dropConn()
		return nil, err
	}
	if ok, err := h.visible(info.Path); err != nil || !ok {
		if err == nil && h.rec != nil {
			// Absent to the client; the log says what was hidden.
			h.rec.Request, h.rec.Op, h.rec.Path = h.rec.Op, audit.OpRefused, info.Path
		}
		return nil, err
	}
	if h.rec != nil && h.rec.Path == "" {
		h.rec.Path = info.Path
	}
	return info, nil
}

func (h *Handler) dropConn() {
	if h.conn != nil {
		h.conn.Close()
		h.conn = nil
	}
}

// found is the valid path whose hash part is hash; or nil, once it has
// answered that there is none (or that the daemon failed).
func (h *Handler) found(w http.ResponseWriter, r *http.Request, hash string) *daemon.PathInfo {
	if !validHash(hash) {
		http.NotFound(w, r)
		return nil
	}
	info, err := h.lookup(r.Context(), hash)
	if err != nil {
		h.serverError(w, err)
		return nil
	}
	if info == nil {
		http.NotFound(w, r)
	}
	return info
}

func (h *Handler) narinfo(w http.ResponseWriter, r *http.Request, hash string) {
	if info := h.found(w, r, hash); info != nil {
		reply(w, r, "text/x-nix-narinfo", NarInfo(info))
	}
}

// narPath is the path whose NAR is named name (as in NarURL): nil when the
// path is gone or, after a delete and rebuild, is another NAR now (a name
// from an older narinfo), and ok false when name is no NAR name at all.
func (h *Handler) narPath(ctx context.Context, name string) (info *daemon.PathInfo, ok bool, err error) {
	hash, narHash, err := parseNarName(name)
	if err != nil {
		return nil, false, nil
	}
	info, err = h.lookup(ctx, hash)
	if info != nil && !bytes.Equal(info.NarHash, narHash) {
		info = nil
	}
	return info, true, err
}

func (h *Handler) nar(w http.ResponseWriter, r *http.Request, name string) {
	info, _, err := h.narPath(r.Context(), name)
	if err != nil {
		h.serverError(w, err)
		return
	}
	if info == nil {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/x-nix-nar")
	w.Header().Add("Vary", "Accept-Encoding")
	if r.Method == http.MethodHead || !acceptsZstd(r) {
		w.Header().Set("Content-Length", strconv.FormatUint(info.NarSize, 10))
	}
	if r.Method == http.MethodHead {
		return
	}
	var out io.Writer = w
	var finish func() error
	if acceptsZstd(r) {
		a := &adaptiveWriter{w: w, size: info.NarSize}
		out, finish = a, a.Close
	}
	// The NAR goes out as the daemon dumps it, checked against its hash on
	// the way: a NAR that does not match the store's database ends the
	// response abnormally, and is logged. (Nix checks the hash of what it
	// downloads too; this tells the cache's admin.)
	sum := sha256.New()
	err = h.conn.NarFromPath(info.Path, info.NarSize, io.MultiWriter(out, sum))
	if err == nil {
		err = checkSum(sum, info)
	}
	if err == nil && finish != nil {
		err = finish()
	}
	if err != nil {
		// The connection is mid-NAR, and the response is mid-body: neither
		// can go on. Aborting makes the client see a truncated response.
		h.dropConn()
		panic(http.ErrAbortHandler)
	}
}

func checkSum(sum hash.Hash, info *daemon.PathInfo) error {
	if !bytes.Equal(sum.Sum(nil), info.NarHash) {
		return fmt.Errorf("%s: the NAR the daemon sent does not match its hash", info.Path)
	}
	return nil
}

func (h *Handler) serverError(w http.ResponseWriter, err error) {
	// The client learns that the cache failed, not how: the daemon's
	// messages stay on the server.
	if h.Logf != nil {
		h.Logf("%v", err)
	}
	http.Error(w, "the cache's Nix daemon failed", http.StatusInternalServerError)
}

// ChannelCommand is the exec command of an SSH session channel on which
// the client speaks this API (HTTP/1.1 over the channel's standard input and
// output): 'nixcache serve' answers it, 'nixcache client substituter' asks
// for it.
const ChannelCommand = "nixcache-binary-cache"

// ClosurePrefix is where the narinfos of a path's whole closure are served
// at once, for nixcache's substituter (Nix knows nothing of it):
// /nixcache-closure/HASH answers the narinfos of the path with that hash
// part and of everything it refers to, directly or not, each followed by a
// blank line, the path's own first. Nix asks for narinfos one by one, and
// over a WAN each costs a round trip; so the substituter, asked for one,
// asks for its closure and answers the rest from memory.
const ClosurePrefix = "/nixcache-closure/"

// maxClosure bounds a closure answer. Beyond it, the answer ends and the
// substituter asks for what is missing one narinfo at a time.
const maxClosure = 20000

func (h *Handler) closure(w http.ResponseWriter, r *http.Request, hash string) {
	top := h.found(w, r, hash)
	if top == nil {
		return
	}
	// Breadth first, each level's infos asked for in one pipelined batch.
	var b strings.Builder
	seen := map[string]bool{top.Path: true}
	level := []*daemon.PathInfo{top}
	for n := 1; len(level) > 0; {
		var next []string
		for _, info := range level {
			b.WriteString(NarInfo(info))
			b.WriteString("\n")
			for _, ref := range info.References {
				if !seen[ref] && n < maxClosure {
					seen[ref] = true
					next = append(next, ref)
					n++
				}
			}
		}
		level = level[:0]
		if len(next) == 0 {
			break
		}
		err := h.conn.QueryPathInfos(next, func(_ int, info *daemon.PathInfo, err error) error {
			if err == nil {
				level = append(level, info)
			}
			// A reference collected meanwhile is left out: the substituter
			// asks for it alone, and hears it is gone.
			return nil
		})
		if err != nil {
			h.dropConn()
			h.serverError(w, err)
			return
		}
	}
	reply(w, r, "text/x-nixcache-narinfos", b.String())
}

// NarsPrefix is where several NARs are served in one response, for
// nixcache's substituter: /nixcache-nars/NAME,NAME,... (each NAME as in a
// narinfo's URL, HASH-NARHASH.nar) answers, for each in order, a line
// "NAME SIZE" and the NAR's SIZE bytes, or "NAME -" for one the cache
// does not have. A NAR costs a round trip before its first byte; a batch
// pays one for all, which is what lets the link, not its latency, bound a
// closure of many small paths.
const NarsPrefix = "/nixcache-nars/"

// MaxNarsBatch bounds the NARs of one batch (and so its URL).
const MaxNarsBatch = 32

func (h *Handler) nars(w http.ResponseWriter, r *http.Request, names []string, start time.Time) {
	batch := h.rec
	if len(names) == 0 || len(names) > MaxNarsBatch {
		batch.Op, batch.Request = audit.OpRefused, audit.OpNar
		http.NotFound(w, r)
		return
	}
	infos := make([]*daemon.PathInfo, len(names))
	recs := make([]audit.Record, len(names))
	total := int64(0)
	for i, name := range names {
		recs[i] = audit.Record{Op: audit.OpNar, Status: http.StatusNotFound}
		h.rec = &recs[i]
		info, ok, err := h.narPath(r.Context(), name)
		h.rec = batch
		if !ok {
			// The batch is refused whole: one record says so.
			batch.Op, batch.Request = audit.OpRefused, audit.OpNar
			http.NotFound(w, r)
			return
		}
		if err != nil {
			batch.Op = audit.OpNar
			h.serverError(w, err)
			return
		}
		if info != nil {
			infos[i] = info
			total += int64(info.NarSize)
			recs[i].Status, recs[i].Bytes = http.StatusOK, int64(info.NarSize)
		}
		total += int64(len(narsHeader(name, infos[i])))
	}
	// Each NAR is a request of its own to the log; the batch is none.
	logged := 0
	defer func() {
		for _, rec := range recs[:logged] {
			rec.Duration = float64(time.Since(start).Microseconds()) / 1000
			if h.Audit != nil {
				h.Audit(rec)
			}
		}
	}()
	w.Header().Set("Content-Type", "application/x-nixcache-nars")
	w.Header().Add("Vary", "Accept-Encoding")
	if r.Method == http.MethodHead || !acceptsZstd(r) {
		w.Header().Set("Content-Length", strconv.FormatInt(total, 10))
	}
	if r.Method == http.MethodHead {
		// Told which NARs exist and their sizes, sent none.
		for i := range recs {
			recs[i].Bytes = 0
		}
		logged = len(recs)
		return
	}
	var out io.Writer = w
	var finish func() error
	if acceptsZstd(r) {
		a := &adaptiveWriter{w: w, size: uint64(total)}
		out, finish = a, a.Close
	}
	for i, name := range names {
		_, err := io.WriteString(out, narsHeader(name, infos[i]))
		if err == nil && infos[i] != nil {
			sum := sha256.New()
			err = h.conn.NarFromPath(infos[i].Path, infos[i].NarSize, io.MultiWriter(out, sum))
			if err == nil {
				err = checkSum(sum, infos[i])
			}
		}
		if err != nil {
			recs[i].Status = http.StatusInternalServerError
			logged = i + 1
			h.dropConn()
			panic(http.ErrAbortHandler)
		}
	}
	logged = len(recs)
	if finish != nil && finish() != nil {
		panic(http.ErrAbortHandler)
	}
}

// narsHeader is the line before a NAR in a batch.
func narsHeader(name string, info *daemon.PathInfo) string {
	if info == nil {
		return name + " -\n"
	}
	return name + " " + strconv.FormatUint(info.NarSize, 10) + "\n"
}
