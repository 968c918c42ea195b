// Package push uploads store paths to the cache through the local
// substituter (docs/uploads.md): it asks which paths the cache lacks, then
// uploads those, each after the references it needs, several at once, each
// NAR streamed from the Nix daemon into its request.
package push

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/signing"
)

// DefaultJobs is how many uploads run at once unless told otherwise.
const DefaultJobs = 8

// Options say what to push where.
type Options struct {
	// To is the local substituter's URL, http://ADDRESS:PORT on loopback.
	To string
	// Paths are store paths, files in them or symlinks to them (./result).
	Paths []string
	// Recursive pushes the closures of Paths. Without it, only Paths are
	// pushed, and their other references must be in the cache already.
	Recursive bool
	// Jobs is how many uploads run at once (DefaultJobs when 0).
	Jobs int
	// Socket is the Nix daemon's socket (daemon.SocketPath() when "").
	Socket string
	// Progress, if set, is called from one goroutine as the run goes on.
	Progress func(Progress)
	// Client sends the requests (a client of its own when nil).
	Client *http.Client
}

// Progress is how far a run is.
type Progress struct {
	Pushed, Total int   // paths done (pushed or failed) and planned
	Sent, Bytes   int64 // NAR bytes sent so far and planned
}

// Result says what a run did. Paths in Failed with Status 0 failed before
// the cache answered, or were not tried because a reference of theirs
// failed.
type Result struct {
	Pushed  []string  `json:"pushed"`
	Skipped []string  `json:"skipped"`
	Failed  []Failure `json:"failed"`
	// Bytes is the NAR bytes of the paths pushed.
	Bytes   int64   `json:"bytes"`
	Seconds float64 `json:"seconds"`
}

// Failure is a path that was not pushed, and why.
type Failure struct {
	Path   string `json:"path"`
	Status int    `json:"status"`
	Error  string `json:"error"`
	// Err is the error itself, for callers that look into it.
	Err error `json:"-"`
}

// IncompleteError is Push's error when some paths were not pushed; the
// Result lists them.
type IncompleteError struct{ Failed, Planned int }

func (e *IncompleteError) Error() string {
	return fmt.Sprintf("%d of %d paths were not pushed", e.Failed, e.Planned)
}

// MissingReferencesError is Push's error, before anything was uploaded,
// when a path's references are neither in the cache nor among the paths to
// push (without Recursive).
type MissingReferencesError struct {
	Path    string   // the first path with missing references
	Missing []string // its references the cache lacks
	Others  int      // how many other paths have some too
}

func (e *MissingReferencesError) Error() string {
	s := fmt.Sprintf("the cache lacks references of %s: %s", e.Path, strings.Join(e.Missing[:min(3, len(e.Missing))], ", "))
	if len(e.Missing) > 3 {
		s += fmt.Sprintf(" and %d more", len(e.Missing)-3)
	}
	if e.Others > 0 {
		s += fmt.Sprintf(" (and %d other paths lack some too)", e.Others)
	}
	return s
}

// Push uploads what the cache lacks of opts.Paths (or of their closures).
// The Result is filled in whenever the run got as far as uploading, also
// when the error is an *IncompleteError.
func Push(ctx context.Context, opts Options) (Result, error) {
	start := time.Now()
	base, err := ParseURL(opts.To)
	if err != nil {
		return Result{}, err
	}
	if opts.Jobs == 0 {
		opts.Jobs = DefaultJobs
	}
	if opts.Jobs < 0 {
		return Result{}, fmt.Errorf("--jobs %d: give a positive number", opts.Jobs)
	}
	if opts.Socket == "" {
		opts.Socket = daemon.SocketPath()
	}
	if opts.Client == nil {
		// An idle connection for every worker (the default keeps two), and
		// no proxy: the substituter is on loopback.
		opts.Client = &http.Client{Transport: &http.Transport{
			MaxIdleConnsPerHost: opts.Jobs,
			IdleConnTimeout:     30 * time.Second,
		}}
		defer opts.Client.CloseIdleConnections()
	}
	roots, err := storePaths(opts.Paths)
	if err != nil {
		return Result{}, err
	}
	conn, err := daemon.Dial(ctx, opts.Socket)
	if err != nil {
		return Result{}, err
	}
	infos, err := collect(conn, roots, opts.Recursive)
	if err != nil {
		conn.Close()
		return Result{}, err
	}
	sub := &substituter{base: base, client: opts.Client}
	lacks, err := sub.missing(ctx, ask(infos, opts.Recursive))
	if err != nil {
		conn.Close()
		return Result{}, err
	}
	upload, skipped, err := decide(infos, lacks, opts.Recursive)
	if err != nil {
		conn.Close()
		return Result{}, err
	}
	p, err := newPlan(upload)
	if err != nil {
		conn.Close()
		return Result{}, err
	}
	r := &runner{
		sub:      sub,
		plan:     p,
		jobs:     opts.Jobs,
		progress: opts.Progress,
		dial: func(ctx context.Context) (narSource, error) {
			return daemon.Dial(ctx, opts.Socket)
		},
		first: conn,
	}
	res := r.run(ctx)
	res.Skipped = skipped
	res.Seconds = time.Since(start).Seconds()
	if len(res.Failed) > 0 {
		return res, &IncompleteError{Failed: len(res.Failed), Planned: len(upload)}
	}
	return res, ctx.Err()
}

// storePaths resolves arguments the way sign does, without duplicates.
func storePaths(args []string) ([]string, error) {
	if len(args) == 0 {
		return nil, errors.New("no paths given")
	}
	var paths []string
	for _, a := range args {
		p, err := signing.StorePath(a)
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	slices.Sort(paths)
	return slices.Compact(paths), nil
}

// collect reads the path info of roots and, if recursive, of everything
// they refer to, breadth first, one pipelined batch a level.
func collect(conn *daemon.Conn, roots []string, recursive bool) ([]*daemon.PathInfo, error) {
	seen := make(map[string]bool, len(roots))
	for _, p := range roots {
		seen[p] = true
	}
	var infos []*daemon.PathInfo
	for level := roots; len(level) > 0; {
		var next []string
		err := conn.QueryPathInfos(level, func(i int, info *daemon.PathInfo, err error) error {
			if errors.Is(err, daemon.ErrNotValid) {
				return fmt.Errorf("%s is not valid in the store (not built or substituted here)", level[i])
			}
			if err != nil {
				return fmt.Errorf("%s: %w", level[i], err)
			}
			infos = append(infos, info)
			for _, r := range info.References {
				if recursive && !seen[r] {
					seen[r] = true
					next = append(next, r)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		level = next
	}
	return infos, nil
}

// ask lists the paths to ask the cache about: the paths themselves and,
// when their closures are not being pushed, their references too.
func ask(infos []*daemon.PathInfo, recursive bool) []string {
	seen := make(map[string]bool)
	var paths []string
	add := func(p string) {
		if !seen[p] {
			seen[p] = true
			paths = append(paths, p)
		}
	}
	for _, info := range infos {
		add(info.Path)
	}
	if !recursive {
		for _, info := range infos {
			for _, r := range info.References {
				add(r)
			}
		}
	}
	return paths
}

// decide splits infos into what to upload and what the cache has. Without
// recursive, a reference the cache lacks must be among infos: the cache
// would refuse the path that needs it (409), so nothing is uploaded.
func decide(infos []*daemon.PathInfo, lacks map[string]bool, recursive bool) (upload []*daemon.PathInfo, skipped []string, err error) {
	pushing := make(map[string]bool)
	for _, info := range infos {
		if lacks[info.Path] {
			upload = append(upload, info)
			pushing[info.Path] = true
		} else {
			skipped = append(skipped, info.Path)
		}
	}
	slices.Sort(skipped)
	if skipped == nil {
		skipped = []string{}
	}
	if recursive {
		return upload, skipped, nil
	}
	var missing *MissingReferencesError
	for _, info := range upload {
		var refs []string
		for _, r := range uniq(info.References) {
			if lacks[r] && !pushing[r] {
				refs = append(refs, r)
			}
		}
		switch {
		case len(refs) == 0:
		case missing == nil:
			missing = &MissingReferencesError{Path: info.Path, Missing: refs}
		default:
			missing.Others++
		}
	}
	if missing != nil {
		return nil, nil, missing
	}
	return upload, skipped, nil
}

// runner uploads a plan: a coordinator hands ready paths to up to jobs
// workers, each with a daemon connection of its own.
type runner struct {
	sub      *substituter
	plan     *plan
	jobs     int
	progress func(Progress)
	dial     func(context.Context) (narSource, error)
	// first is a connection already open, for the first worker.
	first narSource
	sent  atomic.Int64
}

type outcome struct {
	i      int
	status int
	err    error
}

func (r *runner) run(ctx context.Context) Result {
	res := Result{Pushed: []string{}, Skipped: []string{}, Failed: []Failure{}}
	p := r.plan
	total := len(p.infos)
	var planned int64
	for _, info := range p.infos {
		planned += int64(info.NarSize)
	}
	workers := min(r.jobs, total)
	todo := make(chan int)
	results := make(chan outcome, workers)
	var wg sync.WaitGroup
	for w := range workers {
		var conn narSource
		if w == 0 {
			conn, r.first = r.first, nil
		}
		wg.Go(func() { r.worker(ctx, conn, todo, results) })
	}
	if r.first != nil {
		r.first.Close()
	}
	done, inflight := 0, 0
	settled := make([]bool, total)
	// A refusal every upload would meet, or the end of ctx, stops the run.
	var stopped error
	report := func() {
		if r.progress != nil {
			r.progress(Progress{Pushed: done, Total: total, Sent: r.sent.Load(), Bytes: planned})
		}
	}
	fail := func(i, status int, err error) {
		res.Failed = append(res.Failed, Failure{Path: p.infos[i].Path, Status: status, Error: err.Error(), Err: err})
		settled[i] = true
		done++
		for _, d := range p.failed(i) {
			err := fmt.Errorf("it refers to %s, which was not pushed", p.infos[i].Path)
			res.Failed = append(res.Failed, Failure{Path: p.infos[d].Path, Error: err.Error(), Err: err})
			settled[d] = true
			done++
		}
	}
	tick := time.NewTicker(250 * time.Millisecond)
	defer tick.Stop()
	report()
	for {
		for stopped == nil && inflight < workers {
			i, ok := p.next()
			if !ok {
				break
			}
			todo <- i
			inflight++
		}
		if inflight == 0 {
			break
		}
		select {
		case o := <-results:
			inflight--
			if o.err == nil {
				res.Pushed = append(res.Pushed, p.infos[o.i].Path)
				res.Bytes += int64(p.infos[o.i].NarSize)
				settled[o.i] = true
				done++
				p.succeeded(o.i)
			} else {
				fail(o.i, o.status, o.err)
				var se *StatusError
				switch {
				case ctx.Err() != nil:
					stopped = ctx.Err()
				case errors.As(o.err, &se) && se.Status == http.StatusForbidden:
					// This key may not push at all: asking again for
					// every path would only fill the audit log.
					stopped = fmt.Errorf("the cache refused %s with 403", p.infos[o.i].Path)
				}
			}
			report()
		case <-tick.C:
			report()
		}
	}
	close(todo)
	// Every daemon connection is closed when the run returns.
	wg.Wait()
	// What never started after a stop.
	if stopped == nil {
		stopped = errors.New("the run stopped")
	}
	for i := range p.infos {
		if !settled[i] {
			fail(i, 0, fmt.Errorf("the run stopped: %w", stopped))
		}
	}
	slices.Sort(res.Pushed)
	slices.SortFunc(res.Failed, func(a, b Failure) int { return strings.Compare(a.Path, b.Path) })
	report()
	return res
}

// worker uploads the paths it is handed, over one daemon connection, which
// it opens at its first path and opens again after a dump that was cut off.
func (r *runner) worker(ctx context.Context, conn narSource, todo <-chan int, results chan<- outcome) {
	defer func() {
		if conn != nil {
			conn.Close()
		}
	}()
	for i := range todo {
		info := r.plan.infos[i]
		if conn == nil {
			c, err := r.dial(ctx)
			if err != nil {
				results <- outcome{i: i, err: err}
				continue
			}
			conn = c
		}
		status, narErr, err := r.sub.upload(ctx, conn, info, func(n int) { r.sent.Add(int64(n)) })
		if narErr != nil {
			conn.Close()
			conn = nil
		}
		if err != nil {
			var se *StatusError
			if errors.As(err, &se) {
				status = se.Status
			}
		}
		results <- outcome{i: i, status: status, err: err}
	}
}
