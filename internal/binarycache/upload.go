package binarycache

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"

	"github.com/nixcache/nixcache/internal/audit"
)

// UploadPrefix is where a push client uploads one store path:
// PUT /nixcache-upload/HASH with the narinfo, an empty line and the NAR
// (docs/uploads.md).
const UploadPrefix = "/nixcache-upload/"

// MissingPath is where a client asks which of a list of store paths the
// cache does not serve: POST, one path per line.
const MissingPath = "/nixcache-missing"

// Limits of the upload and missing requests.
const (
	// MaxUploadNarinfo bounds the narinfo part of an upload.
	MaxUploadNarinfo = 64 << 10
	// MaxMissing bounds the paths of one missing request, and
	// MaxMissingBytes its body.
	MaxMissing      = 10000
	MaxMissingBytes = 1 << 20
	// maxWindow bounds the zstd window of an upload's encoding, so a
	// hostile frame cannot make the decoder allocate more.
	maxWindow = 8 << 20
)

// Uploader takes a push client's upload, whose body is the narinfo, an
// empty line and the NAR, and answers with the status and one line for the
// client (docs/uploads.md). nixcache serve's is the publisher.
type Uploader interface {
	Upload(ctx context.Context, hash string, body io.Reader) (status int, message string)
}

// SelfAuditing is an Uploader that writes the audit record of some
// uploads itself, those it answered with a status for which AuditsUpload
// says so; the handler writes none for them. The publisher writes those of
// the imports, which must stand even when serve, the process that relayed
// them, is gone before it could write one.
type SelfAuditing interface {
	AuditsUpload(status int) bool
}

func (h *Handler) upload(w http.ResponseWriter, r *http.Request, hash string, rec *audit.Record) {
	rec.Op = audit.OpUpload
	if !validHash(hash) {
		rec.Op, rec.Request = audit.OpRefused, audit.OpUpload
		http.Error(w, "an upload names a store path's hash part: /nixcache-upload/HASH", http.StatusBadRequest)
		return
	}
	rec.Path = StoreDir + "/" + hash
	if h.Uploads == nil || (h.MayUpload != nil && !h.MayUpload()) {
		rec.Op, rec.Request = audit.OpRefused, audit.OpUpload
		http.Error(w, "this client's key has the pull role: it may not upload (the cache's admin can run 'nixcache clients set-role NAME push')", http.StatusForbidden)
		return
	}
	body := io.Reader(r.Body)
	switch enc := r.Header.Get("Content-Encoding"); enc {
	case "", "identity":
	case "zstd":
		dec, err := zstd.NewReader(r.Body, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxWindow(maxWindow), zstd.WithDecoderMaxMemory(maxWindow))
		if err != nil {
			h.serverError(w, err)
			return
		}
		defer dec.Close()
		body = dec
	default:
		http.Error(w, fmt.Sprintf("an upload's Content-Encoding is zstd or none, not %q", enc), http.StatusUnsupportedMediaType)
		return
	}
	counted := &countingReader{r: body}
	br := bufio.NewReaderSize(counted, MaxUploadNarinfo+4<<10)
	head := peekNarinfo(br)
	if p := narinfoStorePath(head); p != "" {
		rec.Path = p
	}
	if h.Published != nil {
		// In published mode a reference must be served to this client:
		// the publisher checks only that it is valid, and a published
		// path's closure is published with it.
		if ref, err := h.unpublishedReference(r.Context(), head, rec.Path); err != nil {
			h.serverError(w, err)
			return
		} else if ref != "" {
			// Word for word the publisher's answer for a reference that
			// is not valid: whether a path the client may not see exists
			// is not the client's to learn.
			http.Error(w, fmt.Sprintf("reference %s of %s is not valid on the cache: push it first", ref, rec.Path), http.StatusConflict)
			return
		}
	}
	status, msg := h.Uploads.Upload(r.Context(), hash, br)
	rec.Bytes = counted.n
	if a, ok := h.Uploads.(SelfAuditing); ok && a.AuditsUpload(status) {
		rec.Op = "" // the uploader's record is the one
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(status)
	io.WriteString(w, strings.TrimRight(msg, "\n")+"\n")
}

// peekNarinfo is the narinfo part of an upload, its lines up to the empty
// one, read ahead without consuming it: the publisher reads and checks the
// narinfo. A body whose narinfo does not end within MaxUploadNarinfo gives
// what there is, which the publisher refuses.
func peekNarinfo(br *bufio.Reader) []string {
	head, _ := br.Peek(MaxUploadNarinfo + 1)
	var lines []string
	for line := range strings.SplitSeq(string(head), "\n") {
		if line == "" {
			break
		}
		lines = append(lines, line)
	}
	return lines
}

// narinfoStorePath is the narinfo's StorePath, for the audit log only.
func narinfoStorePath(lines []string) string {
	for _, line := range lines {
		if v, ok := strings.CutPrefix(line, "StorePath: "); ok && storePathOf(v) == v {
			return v
		}
	}
	return ""
}

// unpublishedReference is the first reference the narinfo names, other
// than the path itself (self), that this client is not served, or "".
// Every References line counts (the publisher refuses a narinfo with two);
// a reference that is no store path name is the publisher's to refuse.
func (h *Handler) unpublishedReference(ctx context.Context, lines []string, self string) (string, error) {
	var refs []string
	for _, line := range lines {
		key, value, _ := strings.Cut(line, ": ")
		if key != "References" {
			continue
		}
		for base := range strings.FieldsSeq(value) {
			if ref := StoreDir + "/" + base; storePathOf(ref) == ref && ref != self {
				refs = append(refs, ref)
			}
		}
	}
	if len(refs) == 0 {
		return "", nil
	}
	if err := h.ensureConn(ctx); err != nil {
		return "", err
	}
	for _, ref := range refs {
		ok, err := h.visible(ref)
		if err != nil {
			return "", err
		}
		if !ok {
			return ref, nil
		}
	}
	return "", nil
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// missing answers which of the listed paths the cache does not serve.
func (h *Handler) missing(w http.ResponseWriter, r *http.Request, rec *audit.Record) {
	rec.Op = audit.OpMissing
	body, err := io.ReadAll(io.LimitReader(r.Body, MaxMissingBytes+1))
	if err != nil {
		return
	}
	if len(body) > MaxMissingBytes {
		http.Error(w, fmt.Sprintf("at most %d bytes of paths per request", MaxMissingBytes), http.StatusRequestEntityTooLarge)
		return
	}
	paths := strings.Fields(string(body))
	if len(paths) > MaxMissing {
		http.Error(w, fmt.Sprintf("at most %d paths per request", MaxMissing), http.StatusRequestEntityTooLarge)
		return
	}
	for _, p := range paths {
		if storePathOf(p) != p {
			http.Error(w, "not a store path: "+strconv.Quote(p), http.StatusBadRequest)
			return
		}
	}
	if err := h.ensureConn(r.Context()); err != nil {
		h.serverError(w, err)
		return
	}
	valid, err := h.conn.QueryValidPaths(paths)
	if err != nil {
		h.dropConn()
		h.serverError(w, err)
		return
	}
	have := make(map[string]bool, len(valid))
	for _, p := range valid {
		have[p] = true
	}
	var b bytes.Buffer
	for _, p := range paths {
		if have[p] {
			ok, err := h.visible(p)
			if err != nil {
				h.serverError(w, err)
				return
			}
			if ok {
				continue
			}
		}
		b.WriteString(p + "\n")
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Content-Length", strconv.Itoa(b.Len()))
	w.Write(b.Bytes())
}
