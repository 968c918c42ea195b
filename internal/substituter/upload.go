package substituter

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"

	"github.com/nixcache/nixcache/internal/binarycache"
)

// Uploads (docs/uploads.md): `nixcache push` sends PUT /nixcache-upload/HASH
// and POST /nixcache-missing, which are relayed as they are; `nix copy --to
// http://127.0.0.1:PORT` speaks Nix's HTTP binary-cache store, whose NAR
// and narinfo PUTs are turned into one upload each (nixstore.go). Whoever
// can reach the port may read, as before; only root and the --upload-user
// users may write, since an upload is published under this machine's key.

// The channel requests of an upload, as nixcache serve answers them.
const (
	uploadPrefix = binarycache.UploadPrefix
	missingPath  = binarycache.MissingPath
	// maxMissingBody bounds a missing query's body, as the cache does.
	maxMissingBody = binarycache.MaxMissingBytes
	// maxRelayAnswer bounds an answer relayed back: a missing query's
	// answer is no longer than its question, an upload's is one line.
	maxRelayAnswer = maxMissingBody + 1<<10
)

// serveWrite answers a PUT or POST: from root or an --upload-user user
// only.
func (s *Server) serveWrite(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if r.Method == http.MethodPost && p != missingPath {
		w.Header().Set("Allow", "GET, HEAD, PUT")
		http.Error(w, "nixcache substituter: the only POST is "+missingPath, http.StatusMethodNotAllowed)
		return
	}
	if status, msg := s.mayWrite(r); status != 0 {
		http.Error(w, msg, status)
		return
	}
	if r.Method == http.MethodPost {
		s.relayMissing(w, r)
		return
	}
	if hash, ok := strings.CutPrefix(p, uploadPrefix); ok {
		s.relayUpload(w, r, hash)
		return
	}
	s.serveNixPut(w, r)
}

// connKey carries the request's connection in its context (ConnContext).
type connKey struct{}

// ConnContext is for http.Server's ConnContext: it keeps each request's
// connection, whose socket mayWrite asks the kernel about. Without it no
// upload is taken.
func (s *Server) ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, connKey{}, c)
}

// mayWrite is 0 when the request comes from root or an --upload-user user,
// else the status and message that refuse it.
//
// The kernel links the two ends of a loopback connection only by their
// addresses: the client's socket is the one /proc/net/tcp lists from its
// address to ours. A client that resets its connection frees that address
// pair while its request still waits to be read here, and another socket
// (root's, made to connect from the same port) may then take it. So the
// answer counts only if this end is still connected after it was read: then
// the pair was never free, and the socket found was the client's.
func (s *Server) mayWrite(r *http.Request) (int, string) {
	local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
	conn, _ := r.Context().Value(connKey{}).(net.Conn)
	if local == nil || conn == nil {
		s.opt.Logf("upload from %s: the HTTP server does not pass its connections (ConnContext), so no upload is taken", r.RemoteAddr)
		return http.StatusForbidden, "nixcache substituter: cannot tell who sent this upload"
	}
	uid, err := peerUID(local.String(), r.RemoteAddr)
	if err == nil {
		err = stillConnected(conn)
	}
	if err != nil {
		s.opt.Logf("upload from %s: cannot tell its user: %v", r.RemoteAddr, err)
		return http.StatusForbidden, "nixcache substituter: cannot tell which user sent this upload, so it is refused"
	}
	if uid != 0 && !slices.Contains(s.opt.UploadUIDs, uid) {
		return http.StatusForbidden, fmt.Sprintf("nixcache substituter: uploads through this substituter are for root and --upload-user users; uid %d is neither", uid)
	}
	return 0, ""
}

// relayUpload forwards a push's upload as it is, its body streamed and
// compressed on the wire when that pays.
func (s *Server) relayUpload(w http.ResponseWriter, r *http.Request, hash string) {
	if !isNix32(hash, storeHashLen) {
		http.Error(w, "nixcache substituter: an upload names a store path's hash part: "+uploadPrefix+"HASH", http.StatusBadRequest)
		return
	}
	body, length, encoding := io.Reader(r.Body), r.ContentLength, ""
	switch e := r.Header.Get("Content-Encoding"); e {
	case "", "identity":
		var err error
		var rc io.ReadCloser
		if rc, encoding, err = binarycache.CompressBody(r.Body); err != nil {
			http.Error(w, "nixcache substituter: reading the upload: "+err.Error(), http.StatusBadRequest)
			return
		}
		defer rc.Close()
		body = rc
		if encoding != "" {
			length = -1
		}
	case "zstd":
		encoding = e
	default:
		http.Error(w, fmt.Sprintf("nixcache substituter: an upload's Content-Encoding is zstd or none, not %q", e), http.StatusUnsupportedMediaType)
		return
	}
	resp, err := s.relay(r.Context(), http.MethodPut, uploadPrefix+hash, body, length, encoding)
	if err != nil {
		relayFailed(w, err)
		return
	}
	defer resp.Body.Close()
	if resp.StatusCode == http.StatusOK || resp.StatusCode == http.StatusCreated {
		s.narinfos.forget(hash)
	}
	passBack(w, resp)
}

// relayMissing forwards a push's question: which of these paths does the
// cache lack?
func (s *Server) relayMissing(w http.ResponseWriter, r *http.Request) {
	if r.ContentLength > maxMissingBody {
		http.Error(w, fmt.Sprintf("nixcache substituter: ask about at most %d bytes of paths at once", maxMissingBody), http.StatusRequestEntityTooLarge)
		return
	}
	body := http.MaxBytesReader(w, r.Body, maxMissingBody)
	resp, err := s.relay(r.Context(), http.MethodPost, missingPath, body, r.ContentLength, "")
	if err != nil {
		relayFailed(w, err)
		return
	}
	defer resp.Body.Close()
	passBack(w, resp)
}

// relay sends one request to the cache on an upload channel. length is the
// body's, -1 when unknown; encoding is its Content-Encoding, if any.
func (s *Server) relay(ctx context.Context, method, path string, body io.Reader, length int64, encoding string) (*http.Response, error) {
	if !s.up.Up() {
		return nil, ErrDown
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://"+ChannelCommand+path, body)
	if err != nil {
		return nil, err
	}
	req.ContentLength = length
	if encoding != "" {
		req.Header.Set("Content-Encoding", encoding)
	}
	req.Header.Set("Content-Type", "application/octet-stream")
	if method == http.MethodPost {
		req.Header.Set("Content-Type", "text/plain")
	}
	return s.uploads.Do(req)
}

// relayFailed answers a request that could not be put to the cache.
func relayFailed(w http.ResponseWriter, err error) {
	if errors.Is(err, ErrDown) {
		http.Error(w, "nixcache substituter: the cache is unreachable; try again once it is back", http.StatusServiceUnavailable)
		return
	}
	http.Error(w, "nixcache substituter: relaying to the cache: "+err.Error(), http.StatusBadGateway)
}

// passBack answers with the cache's answer.
func passBack(w http.ResponseWriter, resp *http.Response) {
	if ct := resp.Header.Get("Content-Type"); ct != "" {
		w.Header().Set("Content-Type", ct)
	}
	w.WriteHeader(resp.StatusCode)
	io.Copy(w, io.LimitReader(resp.Body, maxRelayAnswer))
}

// answerLine is the first line of the cache's answer, for Nix to print.
// Nix prints it as it is, on the terminal of whoever ran nix copy, so a
// control character (an escape sequence, a bidirectional override, a byte
// that is no UTF-8) is shown, not sent: the cache may be hostile.
func answerLine(resp *http.Response) string {
	line, _ := bufio.NewReader(io.LimitReader(resp.Body, 1<<10)).ReadString('\n')
	line = strings.TrimSpace(line)
	if line == "" {
		return "the cache answered " + printable(resp.Status)
	}
	return printable(line)
}

// printable shows a line's control characters as Go escapes.
func printable(s string) string {
	var b strings.Builder
	for len(s) > 0 {
		r, size := utf8.DecodeRuneInString(s)
		switch {
		case r == utf8.RuneError && size == 1:
			fmt.Fprintf(&b, `\x%02x`, s[0])
		case unicode.IsControl(r) || unicode.Is(unicode.Cf, r):
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		default:
			b.WriteString(s[:size])
		}
		s = s[size:]
	}
	return b.String()
}

// channelBudget bounds the channels NAR downloads and uploads hold
// together: they share the connection's channels beyond the narinfos'
// (sshd's MaxSessions bounds them all). Each side keeps its idle channels
// for the next request; when the budget is spent, the other side's idle
// ones are closed to make room.
type channelBudget struct {
	slots chan struct{}
}

func newChannelBudget(n int) *channelBudget {
	return &channelBudget{slots: make(chan struct{}, n)}
}

// dial opens a channel within the budget, calling full first when none is
// left.
func (b *channelBudget) dial(ctx context.Context, up *Upstream, full func()) (net.Conn, error) {
	select {
	case b.slots <- struct{}{}:
	default:
		full()
		select {
		case b.slots <- struct{}{}:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	c, err := up.openChannel(ctx)
	if err != nil {
		<-b.slots
		return nil, err
	}
	return &budgetConn{Conn: c, release: func() { <-b.slots }}, nil
}

// budgetConn gives its slot back when closed.
type budgetConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *budgetConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
