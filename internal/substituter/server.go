package substituter

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nixcache/nixcache/internal/binarycache"
)

// Options tune a Server; the zero value of each field means its default.
type Options struct {
	// Channels is how many channels may be open on the connection at
	// once; sshd's MaxSessions (default 10) bounds it.
	Channels int
	// SpoolDir is where the spool's private directory is made.
	SpoolDir string
	// SpoolBytes bounds the NARs on disk at once; a NAR bigger than
	// what is left is not prefetched. Negative: no prefetching of NARs.
	SpoolBytes int64
	// PositiveTTL and NegativeTTL are how long narinfo answers are kept,
	// as Nix's narinfo-cache-positive-ttl and narinfo-cache-negative-ttl.
	PositiveTTL, NegativeTTL time.Duration
	// UploadUIDs are the users besides root whose uploads are taken
	// (--upload-user).
	UploadUIDs []uint32
	// UploadBytes bounds the NAR files Nix's HTTP store uploads that wait
	// on disk for their narinfos.
	UploadBytes int64
	// Logf reports what Nix is not told: connection changes and errors.
	Logf func(format string, args ...any)
}

// Defaults.
const (
	DefaultChannels   = 8
	DefaultSpoolBytes = 1 << 30
	// narinfoCacheBytes bounds the memory narinfo answers take: some
	// 20,000 narinfos, a large closure's worth.
	narinfoCacheBytes = 16 << 20
	// narinfoTimeout bounds a narinfo request to the cache. Past it Nix
	// is told the path is not there, and builds.
	narinfoTimeout = 10 * time.Second
	// prefetchQueue bounds the work waiting to be prefetched; beyond it,
	// requests are not prefetched (Nix asks for them itself).
	prefetchQueue = 4096
	// narinfoPrefetchers fetch closures' narinfos at once.
	narinfoPrefetchers = 4
)

// Server answers Nix's binary-cache requests from the cache behind
// Upstream. Make it with NewServer, serve it with http.Serve, and Close it.
type Server struct {
	up *Upstream
	// small carries narinfos and /nix-cache-info, nars the NARs, on
	// channels of their own: NAR downloads that hold every channel (a
	// local user can start them and never read) must not starve the
	// narinfo lookups Nix waits on.
	small, nars *http.Client
	// uploads carries uploads and missing queries, on channels that count
	// against the NARs' budget but never take all of it: Nix keeps
	// substituting during a push.
	uploads     *http.Client
	opt         Options
	narinfos    *narinfoCache
	spool       *spool
	uploadSpool *uploadSpool
	// narinfoTimeout is narinfoTimeout; tests shorten it.
	narinfoTimeout time.Duration
	ctx            context.Context
	cancel         context.CancelFunc
	workers        sync.WaitGroup

	mu        sync.Mutex
	cacheInfo []byte
	calls     map[string]*narinfoCall
	// seen holds the NARs already prefetched or asked for by Nix, so
	// that each is fetched ahead once and none after Nix asked for it; it
	// is cleared when it grows too large.
	seen map[string]seenBy

	narinfoQueue chan string
	narQueue     *narStack
}

type seenBy uint8

const (
	seenByPrefetch seenBy = 1 << iota
	seenByNix
)

// narJob is a NAR to prefetch: its file name and size.
type narJob struct {
	file string
	size int64
}

type narinfoCall struct {
	done chan struct{}
	body []byte
	err  error
}

// NewServer makes a Server over up; it starts the prefetchers, which stop
// at Close.
func NewServer(up *Upstream, opt Options) (*Server, error) {
	if opt.Channels == 0 {
		opt.Channels = DefaultChannels
	}
	if opt.SpoolBytes == 0 {
		opt.SpoolBytes = DefaultSpoolBytes
	}
	if opt.SpoolDir == "" {
		opt.SpoolDir = os.TempDir()
	}
	if opt.PositiveTTL == 0 {
		opt.PositiveTTL = DefaultPositiveTTL
	}
	if opt.NegativeTTL == 0 {
		opt.NegativeTTL = DefaultNegativeTTL
	}
	if opt.UploadBytes == 0 {
		opt.UploadBytes = DefaultUploadBytes
	}
	if opt.Logf == nil {
		opt.Logf = func(string, ...any) {}
	}
	var s *Server
	// The NARs' channels, and the uploads', are dialled within one budget;
	// when it is spent, the other kind's idle channels make room.
	narChannels := max(1, opt.Channels-narinfoChannels(opt.Channels))
	budget := newChannelBudget(narChannels)
	channels := func(n int, dial func(context.Context) (net.Conn, error), headerTimeout time.Duration) *http.Client {
		return &http.Client{Transport: &http.Transport{
			DialContext:         func(ctx context.Context, _, _ string) (net.Conn, error) { return dial(ctx) },
			MaxConnsPerHost:     n,
			MaxIdleConnsPerHost: n,
			IdleConnTimeout:     time.Minute,
			// Accept-Encoding is set by hand, for NARs only (narBody).
			DisableCompression:    true,
			ResponseHeaderTimeout: headerTimeout,
		}}
	}
	narDial := func(ctx context.Context) (net.Conn, error) {
		return budget.dial(ctx, up, func() { s.uploads.CloseIdleConnections() })
	}
	small := channels(narinfoChannels(opt.Channels), up.openChannel, 30*time.Second)
	nars := small
	if opt.Channels > 1 {
		nars = channels(narChannels, narDial, 30*time.Second)
	} else {
		// One channel: narinfos, NARs and uploads take turns on it.
		small = channels(1, narDial, 30*time.Second)
		nars = small
	}
	// All the NAR channels but one: Nix's downloads always find one. No
	// bound on waiting for the answer: the cache answers an upload once
	// the daemon has imported it, which takes what it takes; a dead
	// connection is noticed by the keepalives.
	uploads := channels(max(1, narChannels-1), func(ctx context.Context) (net.Conn, error) {
		return budget.dial(ctx, up, func() { s.nars.CloseIdleConnections() })
	}, 0)
	s = &Server{
		up:             up,
		small:          small,
		nars:           nars,
		uploads:        uploads,
		opt:            opt,
		narinfos:       newNarinfoCache(opt.PositiveTTL, opt.NegativeTTL, narinfoCacheBytes),
		narinfoTimeout: narinfoTimeout,
		calls:          map[string]*narinfoCall{},
		seen:           map[string]seenBy{},
		narinfoQueue:   make(chan string, prefetchQueue),
		narQueue:       newNarStack(prefetchQueue),
	}
	if opt.SpoolBytes > 0 {
		dir, err := spoolDir(opt.SpoolDir)
		if err != nil {
			return nil, fmt.Errorf("making the spool directory: %w", err)
		}
		s.spool = newSpool(dir, opt.SpoolBytes)
	}
	dir, err := uploadDir(opt.SpoolDir)
	if err != nil {
		if s.spool != nil {
			os.RemoveAll(s.spool.dir)
		}
		return nil, fmt.Errorf("making the upload directory: %w", err)
	}
	s.uploadSpool = newUploadSpool(dir, opt.UploadBytes)
	up.mu.Lock()
	up.onUp = func() {
		small.CloseIdleConnections()
		nars.CloseIdleConnections()
		uploads.CloseIdleConnections()
	}
	up.mu.Unlock()
	s.ctx, s.cancel = context.WithCancel(context.Background())
	for range narinfoPrefetchers {
		s.goWork(s.prefetchNarinfos)
	}
	if s.spool != nil {
		// All the NAR channels but one, which Nix's own requests always
		// find (a NAR being prefetched, Nix follows as it arrives).
		for range max(1, opt.Channels-narinfoChannels(opt.Channels)-1) {
			s.goWork(s.prefetchNARs)
		}
	}
	return s, nil
}

func (s *Server) goWork(f func()) {
	s.workers.Add(1)
	go func() {
		defer s.workers.Done()
		f()
	}()
}

// Close stops the prefetchers and deletes the spools.
func (s *Server) Close() error {
	s.cancel()
	s.workers.Wait()
	s.small.CloseIdleConnections()
	s.nars.CloseIdleConnections()
	s.uploads.CloseIdleConnections()
	err := s.uploadSpool.removeAll()
	if s.spool != nil {
		err = errors.Join(err, os.RemoveAll(s.spool.dir))
	}
	return err
}

func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	write := r.Method == http.MethodPut || r.Method == http.MethodPost
	if !write && r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD, PUT, POST")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	if !loopbackHost(r.Host) {
		http.Error(w, "nixcache substituter: answers loopback names only", http.StatusForbidden)
		return
	}
	// A browser's request, sent by a web page to 127.0.0.1: it could not
	// read the answer, but could start prefetches and load the cache. Nix
	// sends neither header.
	if r.Header.Get("Origin") != "" || r.Header.Get("Sec-Fetch-Site") != "" {
		http.Error(w, "nixcache substituter: answers Nix, not web pages", http.StatusForbidden)
		return
	}
	if write {
		s.serveWrite(w, r)
		return
	}
	req, ok := parseRequest(r.URL.Path)
	if !ok || r.URL.RawQuery != "" {
		if file, isNAR := strings.CutPrefix(r.URL.Path, "/nar/"); isNAR && r.URL.RawQuery == "" && s.headUploadedNAR(w, r, file) {
			return
		}
		http.NotFound(w, r)
		return
	}
	switch req.kind {
	case cacheInfo:
		s.serveCacheInfo(w, r)
	case narInfo:
		s.serveNarinfo(w, r, req.name)
	case nar:
		s.serveNAR(w, r, req)
	}
}

func (s *Server) serveCacheInfo(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	body := s.cacheInfo
	s.mu.Unlock()
	if body == nil {
		var err error
		body, err = s.fetchSmall(r.Context(), request{kind: cacheInfo}.upstreamPath(), maxNarinfo)
		if err == nil && body == nil {
			err = errors.New("the cache has no nix-cache-info")
		}
		if err != nil {
			unreachable(w, err.Error())
			return
		}
		s.mu.Lock()
		s.cacheInfo = body
		s.mu.Unlock()
	}
	reply(w, r, "text/x-nix-cache-info", body)
}

func (s *Server) serveNarinfo(w http.ResponseWriter, r *http.Request, hash string) {
	if !s.up.Up() {
		// Even a narinfo in memory: its NAR could not be fetched.
		missing(w)
		return
	}
	body, err := s.narinfo(hash)
	if err != nil {
		if !errors.Is(err, ErrDown) {
			s.opt.Logf("narinfo %s: %v", hash, err)
		}
		missing(w)
		return
	}
	if body == nil {
		http.NotFound(w, r)
		return
	}
	reply(w, r, "text/x-nix-narinfo", body)
	if r.Method == http.MethodGet {
		// Nix asks for the narinfo of a path it lacks (a HEAD only asks
		// whether the path is there): it will want its NAR, and the
		// narinfos of its closure.
		s.prefetch(parseNarinfo(body))
	}
}

// narinfo is the cache's narinfo for hash, nil when it has none: from
// memory when it is there, else from the cache, one request per hash
// however many ask at once.
func (s *Server) narinfo(hash string) ([]byte, error) {
	if body, ok := s.narinfos.get(hash); ok {
		return body, nil
	}
	if !s.up.Up() {
		return nil, ErrDown
	}
	s.mu.Lock()
	c, ok := s.calls[hash]
	if !ok {
		c = &narinfoCall{done: make(chan struct{})}
		s.calls[hash] = c
	}
	s.mu.Unlock()
	if ok {
		<-c.done
		return c.body, c.err
	}
	conn := s.up.current()
	ctx, cancel := context.WithTimeout(s.ctx, s.narinfoTimeout)
	c.body, c.err = s.fetchClosure(ctx, hash)
	cancel()
	if errors.Is(c.err, context.DeadlineExceeded) {
		s.up.drop(conn, "no narinfo within "+s.narinfoTimeout.String())
	}
	if c.err == nil {
		s.narinfos.put(hash, c.body)
	}
	s.mu.Lock()
	delete(s.calls, hash)
	s.mu.Unlock()
	close(c.done)
	return c.body, c.err
}

// narinfoChannels is how many of n channels are kept for narinfos: a
// quarter, at least one (with a single channel, both kinds share it).
// Narinfos come a closure at a time, so few are needed.
func narinfoChannels(n int) int { return max(1, n/4) }

// checkNarinfo refuses a narinfo that would send Nix elsewhere for the NAR:
// the URL is not covered by the signature, so a hostile cache could reuse a
// signed narinfo with an absolute URL (http://, file://) and have the
// daemon fetch it. Only nar/HASH-NARHASH.nar, uncompressed, with a size,
// is what nixcache serve writes; the NAR then comes through here too.
func checkNarinfo(body []byte) error {
	if f := parseNarinfo(body); f.narFile == "" || f.size <= 0 || !f.uncompressed {
		return errors.New("the cache sent a narinfo whose NAR is not nar/HASH-NARHASH.nar, uncompressed, of a known size")
	}
	return nil
}

// maxClosureAnswer bounds the narinfos of one closure read at once: about
// 20,000 paths, what nixcache serve sends at most.
const maxClosureAnswer = 32 << 20

// fetchClosure asks the cache for the narinfos of hash's whole closure in
// one round trip (binarycache.ClosurePrefix), keeps them all, and returns
// hash's own, or nil when the cache has no such path. Nix asks next for
// the narinfos of the references it lacks: they are here already.
func (s *Server) fetchClosure(ctx context.Context, hash string) ([]byte, error) {
	all, err := s.fetchSmall(ctx, binarycache.ClosurePrefix+hash, maxClosureAnswer)
	if all == nil || err != nil {
		return nil, err
	}
	var own []byte
	// Each narinfo ends with a line break and is followed by a blank line.
	for block := range strings.SplitSeq(strings.TrimSuffix(string(all), "\n\n"), "\n\n") {
		body := []byte(block + "\n")
		if len(body) > maxNarinfo || checkNarinfo(body) != nil {
			return nil, errors.New("the cache sent a closure with a narinfo unlike nixcache serve's")
		}
		f := parseNarinfo(body)
		if f.self == hash {
			own = body
		}
		s.narinfos.put(f.self, body)
	}
	if own == nil {
		return nil, errors.New("the cache sent a closure without the path asked for")
	}
	return own, nil
}

// fetchSmall GETs a file of at most limit bytes from the cache: its
// content, or nil for a 404.
func (s *Server) fetchSmall(ctx context.Context, path string, limit int) ([]byte, error) {
	resp, err := s.get(ctx, path)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound:
		return nil, nil
	default:
		return nil, fmt.Errorf("the cache answered %q", resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, int64(limit)+1))
	if err != nil {
		return nil, err
	}
	if len(body) > limit {
		return nil, fmt.Errorf("the cache sent more than %d bytes for %s", limit, path)
	}
	return body, nil
}

func (s *Server) get(ctx context.Context, path string) (*http.Response, error) {
	if !s.up.Up() {
		return nil, ErrDown
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+ChannelCommand+path, nil)
	if err != nil {
		return nil, err
	}
	if strings.HasPrefix(path, "/nar/") {
		// The cache compresses a NAR whose sample compresses (nixcache
		// serve); narBody decodes it before Nix or the spool sees it.
		req.Header.Set("Accept-Encoding", "zstd")
		return s.nars.Do(req)
	}
	return s.small.Do(req)
}

func (s *Server) serveNAR(w http.ResponseWriter, r *http.Request, req request) {
	if r.Method != http.MethodGet {
		w.Header().Set("Allow", "GET")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	s.markSeen(req.name, seenByNix)
	if s.spool != nil {
		e, body, err := s.spool.claim(req.name)
		if err != nil {
			s.opt.Logf("NAR %s from the spool: %v", req.name, err)
		}
		if e != nil {
			defer body.Close()
			streamNAR(w, body, e.size)
			return
		}
	}
	// The NAR's size, from its narinfo: a compressed stream is cut there,
	// so a hostile cache cannot pour gigabytes into the daemon from a few
	// kilobytes on the wire.
	size, err := s.narSize(req.name)
	if err != nil {
		if !errors.Is(err, ErrDown) {
			s.opt.Logf("NAR %s: %v", req.name, err)
		}
		http.Error(w, "nixcache substituter: no narinfo announces this NAR", http.StatusBadGateway)
		return
	}
	resp, err := s.get(r.Context(), req.upstreamPath())
	if err != nil {
		if !errors.Is(err, ErrDown) && r.Context().Err() == nil {
			s.opt.Logf("NAR %s: %v", req.name, err)
		}
		http.Error(w, "nixcache substituter: the cache is unreachable", http.StatusBadGateway)
		return
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
		body, sent, err := narBody(resp)
		if err == nil && sent >= 0 && sent != size {
			err = fmt.Errorf("the cache sent %d bytes, its narinfo says %d", sent, size)
		}
		if err != nil {
			s.opt.Logf("NAR %s: %v", req.name, err)
			http.Error(w, "nixcache substituter: the cache sent a NAR unlike its narinfo", http.StatusBadGateway)
			return
		}
		defer body.Close()
		// Short of size, the response ends short of its Content-Length,
		// which Nix sees as a failed download.
		streamNAR(w, io.LimitReader(body, size), size)
	case http.StatusNotFound:
		http.NotFound(w, r)
	default:
		s.opt.Logf("NAR %s: the cache answered %q", req.name, resp.Status)
		http.Error(w, "nixcache substituter: the cache answered "+strconv.Quote(resp.Status), http.StatusBadGateway)
	}
}

// narSize is the size of the NAR named file, from the narinfo of its store
// path (the cache's, fetched if need be), which must announce that file.
func (s *Server) narSize(file string) (int64, error) {
	body, err := s.narinfo(file[:storeHashLen])
	if err != nil {
		return 0, err
	}
	if f := parseNarinfo(body); body != nil && f.narFile == file {
		return f.size, nil
	}
	return 0, errors.New("no narinfo of the cache announces it")
}

// maxWindow bounds the zstd window a cache may use, and so the decoder's
// memory: nixcache serve compresses at zstd's fastest level, whose window
// is far smaller.
const maxWindow = 8 << 20

// narBody is the NAR in resp, decoded if the cache compressed it, and its
// size if known. Only zstd is asked for: any other encoding is refused,
// since a NAR passed on encoded would fail Nix's hash check anyway, later
// and less clearly.
func narBody(resp *http.Response) (io.ReadCloser, int64, error) {
	switch e := resp.Header.Get("Content-Encoding"); e {
	case "", "identity":
		return resp.Body, resp.ContentLength, nil
	case "zstd":
		d, err := zstd.NewReader(resp.Body, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true), zstd.WithDecoderMaxWindow(maxWindow))
		if err != nil {
			return nil, 0, err
		}
		return d.IOReadCloser(), -1, nil
	default:
		return nil, 0, fmt.Errorf("the cache sent Content-Encoding %q, which was not asked for", e)
	}
}

// streamNAR copies a NAR to Nix through a fixed buffer: memory stays
// bounded whatever its size. A NAR cut short ends the response short of
// its Content-Length, which Nix sees as a failed download.
func streamNAR(w http.ResponseWriter, body io.Reader, size int64) {
	w.Header().Set("Content-Type", "application/x-nix-nar")
	if size >= 0 {
		w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	}
	w.WriteHeader(http.StatusOK)
	io.CopyBuffer(w, body, make([]byte, 64<<10))
}

// loopbackHost reports whether a request's Host names this machine by a
// loopback address or "localhost", as Nix's requests do. Anything else is a
// browser sent by a page whose name resolves to 127.0.0.1 (DNS rebinding),
// which must not read the cache through this machine.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func reply(w http.ResponseWriter, r *http.Request, contentType string, body []byte) {
	w.Header().Set("Content-Type", contentType)
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	if r.Method == http.MethodGet {
		w.Write(body)
	}
}

// markSeen records who asked for the NAR name and returns who had before.
func (s *Server) markSeen(name string, by seenBy) seenBy {
	s.mu.Lock()
	defer s.mu.Unlock()
	before, ok := s.seen[name]
	if !ok && len(s.seen) >= prefetchQueue*4 {
		clear(s.seen)
	}
	s.seen[name] = before | by
	return before
}

func (s *Server) askedByNix(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[name]&seenByNix != 0
}

// prefetch queues the work a narinfo announces: the narinfos of the
// path's references, and its NAR. A full queue drops work rather than
// hold memory: Nix asks for what was not prefetched.
func (s *Server) prefetch(f narinfoFacts) {
	for _, ref := range f.refs {
		select {
		case s.narinfoQueue <- ref:
		default:
		}
	}
	if s.spool == nil || f.narFile == "" || f.size <= 0 || f.size > s.opt.SpoolBytes {
		return
	}
	s.narQueue.push(narJob{f.narFile, f.size})
}

// prefetchNarinfos fetches queued narinfos into memory and queues their
// references in turn: the closure, breadth first.
func (s *Server) prefetchNarinfos() {
	for {
		select {
		case <-s.ctx.Done():
			return
		case hash := <-s.narinfoQueue:
			if _, ok := s.narinfos.get(hash); ok {
				continue
			}
			body, err := s.narinfo(hash)
			if err != nil || body == nil {
				continue
			}
			for _, ref := range parseNarinfo(body).refs {
				select {
				case s.narinfoQueue <- ref:
				default:
				}
			}
		}
	}
}

// prefetchNARs downloads queued NARs into the spool, up to a batch at a
// time (a NAR costs a round trip before its first byte, a batch one for
// all).
func (s *Server) prefetchNARs() {
	for {
		batch := s.narQueue.pop(s.ctx, binarycache.MaxNarsBatch)
		if batch == nil {
			return
		}
		s.prefetchBatch(batch)
	}
}

// narStack holds the NARs to prefetch, newest first. Nix asks for the
// narinfos of a closure from its top down, and downloads its NARs from the
// bottom up (a path is valid only after its references): the newest
// request is the NAR Nix wants soonest. Full, it forgets the oldest.
type narStack struct {
	mu    sync.Mutex
	jobs  []narJob
	max   int
	ready chan struct{}
}

func newNarStack(max int) *narStack { return &narStack{max: max, ready: make(chan struct{}, 1)} }

func (q *narStack) push(j narJob) {
	q.mu.Lock()
	if len(q.jobs) == q.max {
		q.jobs = append(q.jobs[:0], q.jobs[1:]...)
	}
	q.jobs = append(q.jobs, j)
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

// pop waits for jobs and takes up to n of the newest, newest first; nil
// once ctx ends.
func (q *narStack) pop(ctx context.Context, n int) []narJob {
	for {
		q.mu.Lock()
		if k := len(q.jobs); k > 0 {
			take := min(n, k)
			batch := make([]narJob, take)
			for i := range take {
				batch[i] = q.jobs[k-1-i]
			}
			q.jobs = q.jobs[:k-take]
			more := len(q.jobs) > 0
			q.mu.Unlock()
			if more {
				// Wake another worker for the rest.
				select {
				case q.ready <- struct{}{}:
				default:
				}
			}
			return batch
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-q.ready:
		}
	}
}

// prefetchBatch fetches the NARs of jobs into the spool: those it has room
// for at once in one request, each of the others alone once there is room.
func (s *Server) prefetchBatch(jobs []narJob) {
	var now []narJob
	var entries []*spooled
	var later []narJob
	for _, job := range jobs {
		if s.markSeen(job.file, seenByPrefetch) != 0 || s.askedByNix(job.file) || s.spool.has(job.file) {
			continue
		}
		e, err := s.spool.reserve(job.file, job.size)
		if err != nil {
			s.opt.Logf("spool: %v", err)
			continue
		}
		if e == nil {
			later = append(later, job)
			continue
		}
		now, entries = append(now, job), append(entries, e)
	}
	if len(now) > 0 {
		s.fetchBatch(now, entries)
	}
	for _, job := range later {
		s.prefetchNAR(job)
	}
}

// fetchBatch fills the spool entries of jobs from one batch request
// (binarycache.NarsPrefix), each as its bytes arrive: Nix asking for one
// follows it.
func (s *Server) fetchBatch(jobs []narJob, entries []*spooled) {
	names := make([]string, len(jobs))
	for i, j := range jobs {
		names[i] = j.file
	}
	var br *bufio.Reader
	resp, err := s.get(s.ctx, binarycache.NarsPrefix+strings.Join(names, ","))
	if err == nil {
		defer resp.Body.Close()
		var body io.ReadCloser
		if resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("the cache answered %q", resp.Status)
		} else if body, _, err = narBody(resp); err == nil {
			defer body.Close()
			br = bufio.NewReaderSize(body, 64<<10)
		}
	}
	for i, job := range jobs {
		if err == nil {
			err = readBatched(br, job, entries[i], s.spool)
			continue
		}
		// The batch broke: this NAR and the rest fail, and Nix asks for
		// them alone.
		s.spool.write(entries[i], errReader{err})
	}
	if err != nil && s.ctx.Err() == nil {
		s.opt.Logf("NARs %s…: %v", jobs[0].file, err)
	}
}

// readBatched reads one NAR of a batch into its spool entry: its line, then
// its bytes. An error leaves the stream unusable for the rest.
func readBatched(br *bufio.Reader, job narJob, e *spooled, sp *spool) error {
	// ReadSlice, not ReadString: a line longer than the buffer (a hostile
	// cache's endless one) is an error, not memory.
	raw, err := br.ReadSlice('\n')
	if err != nil {
		sp.write(e, errReader{err})
		return err
	}
	name, size, _ := strings.Cut(strings.TrimSuffix(string(raw), "\n"), " ")
	if name != job.file {
		err = fmt.Errorf("the cache sent %q where %s belongs", name, job.file)
	} else if size == "-" {
		// The cache no longer has it; the batch goes on.
		sp.write(e, errReader{errors.New("the cache no longer has it")})
		return nil
	} else if n, perr := strconv.ParseInt(size, 10, 64); perr != nil || n != job.size {
		err = fmt.Errorf("the cache sent %q bytes of %s, its narinfo says %d", size, job.file, job.size)
	}
	if err != nil {
		sp.write(e, errReader{err})
		return err
	}
	counted := &countingReader{r: io.LimitReader(br, job.size)}
	sp.write(e, counted)
	if counted.n != job.size {
		return fmt.Errorf("the batch ended within %s", job.file)
	}
	return nil
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

// roomPoll is how often a prefetch waiting for room in the spool looks
// again.
const roomPoll = 100 * time.Millisecond

func (s *Server) prefetchNAR(job narJob) {
	var e *spooled
	for {
		// Once Nix asked for the NAR, it got it streamed.
		if s.askedByNix(job.file) || s.spool.has(job.file) {
			return
		}
		var err error
		if e, err = s.spool.reserve(job.file, job.size); err != nil {
			s.opt.Logf("spool: %v", err)
			return
		}
		if e != nil {
			break
		}
		// The spool is full: wait until Nix has taken enough out of it.
		select {
		case <-s.ctx.Done():
			return
		case <-time.After(roomPoll):
		}
	}
	resp, err := s.get(s.ctx, request{kind: nar, name: job.file}.upstreamPath())
	if err != nil {
		s.spool.write(e, errReader{err})
		return
	}
	defer resp.Body.Close()
	var body io.ReadCloser
	var size int64
	if resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("the cache answered %q", resp.Status)
	} else if body, size, err = narBody(resp); err == nil {
		defer body.Close()
		if size >= 0 && size != job.size {
			err = fmt.Errorf("the cache sent %d bytes, its narinfo says %d", size, job.size)
		}
	}
	if err != nil {
		s.spool.write(e, errReader{err})
		return
	}
	s.spool.write(e, body)
}

// errReader makes a failed download look like one that failed in the
// middle, so that it ends the same way.
type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }
