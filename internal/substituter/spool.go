package substituter

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"
)

// unclaimedTTL is how long a prefetched NAR waits for Nix to ask for it
// before its room in the spool is given back: Nix asks for a NAR moments
// after its narinfo, or never (it found the path elsewhere).
const unclaimedTTL = 10 * time.Minute

// spool holds NARs fetched ahead of Nix's requests, on disk, within a
// budget of bytes reserved before each download starts. Each NAR is read
// by one request, while it is still arriving if need be, and deleted after.
type spool struct {
	dir    string
	budget int64
	now    func() time.Time

	mu      sync.Mutex
	used    int64
	entries map[string]*spooled // by NAR file name, until claimed
	// expired is when expire last looked: it walks every entry, so at
	// most once a minute.
	expired time.Time
}

// spooled is one NAR in the spool. Its file lives while anyone holds a
// reference: the index (until the NAR is claimed or expires), the writer
// (until the download ends), the reader (until the response ends).
type spooled struct {
	name    string
	path    string
	size    int64
	created time.Time

	mu      sync.Mutex
	arrived *sync.Cond
	written int64
	done    bool
	err     error
	refs    int
}

func newSpool(dir string, budget int64) *spool {
	return &spool{dir: dir, budget: budget, now: time.Now, entries: map[string]*spooled{}}
}

var errTooShort = errors.New("the cache sent less than the narinfo's size")

// reserve makes room for the NAR name of size bytes and returns its entry,
// whose download the caller then writes with write; nil when it does not
// fit in what is left of the budget. A NAR spooled already is never
// reserved again (the prefetcher fetches each once).
func (s *spool) reserve(name string, size int64) (*spooled, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.expire()
	if _, ok := s.entries[name]; ok || size <= 0 || size > s.budget-s.used {
		return nil, nil
	}
	f, err := os.CreateTemp(s.dir, "nar-")
	if err != nil {
		return nil, err
	}
	f.Close()
	e := &spooled{name: name, path: f.Name(), size: size, created: s.now(), refs: 2}
	e.arrived = sync.NewCond(&e.mu)
	s.entries[name] = e
	s.used += size
	return e, nil
}

// expire drops entries nobody claimed in time. s.mu is held.
func (s *spool) expire() {
	if s.now().Sub(s.expired) < time.Minute {
		return
	}
	s.expired = s.now()
	for name, e := range s.entries {
		e.mu.Lock()
		stale := e.done && s.now().Sub(e.created) > unclaimedTTL
		e.mu.Unlock()
		if stale {
			delete(s.entries, name)
			s.releaseLocked(e)
		}
	}
}

// write copies the download into e's file, telling readers as bytes
// arrive, and ends the writer's hold on it.
func (s *spool) write(e *spooled, body io.Reader) {
	err := e.copy(body)
	e.mu.Lock()
	e.done, e.err = true, err
	e.arrived.Broadcast()
	e.mu.Unlock()
	if err != nil {
		// Nobody may claim a broken download; one already following it
		// gets the error.
		s.mu.Lock()
		if s.entries[e.name] == e {
			delete(s.entries, e.name)
			s.releaseLocked(e)
		}
		s.mu.Unlock()
	}
	s.release(e)
}

func (e *spooled) copy(body io.Reader) error {
	f, err := os.OpenFile(e.path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	buf := make([]byte, 64<<10)
	for e.written < e.size {
		n, rerr := body.Read(buf[:min(int64(len(buf)), e.size-e.written)])
		if n > 0 {
			if _, werr := f.Write(buf[:n]); werr != nil {
				f.Close()
				return werr
			}
			e.mu.Lock()
			e.written += int64(n)
			e.arrived.Broadcast()
			e.mu.Unlock()
		}
		if rerr == io.EOF && e.written < e.size {
			rerr = errTooShort
		}
		if rerr != nil && rerr != io.EOF {
			f.Close()
			return rerr
		}
	}
	return f.Close()
}

// claim hands the NAR name to the one request that reads it; nil when it
// is not in the spool. Later requests for it go to the cache.
func (s *spool) claim(name string) (*spooled, io.ReadCloser, error) {
	s.mu.Lock()
	e, ok := s.entries[name]
	if ok {
		delete(s.entries, name)
	}
	s.mu.Unlock()
	if !ok {
		return nil, nil, nil
	}
	f, err := os.Open(e.path)
	if err != nil {
		s.release(e)
		return nil, nil, err
	}
	return e, &follower{e: e, f: f, release: func() { s.release(e) }}, nil
}

func (s *spool) release(e *spooled) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.releaseLocked(e)
}

func (s *spool) releaseLocked(e *spooled) {
	e.refs--
	if e.refs == 0 {
		os.Remove(e.path)
		s.used -= e.size
	}
}

// has reports whether the NAR name is in the spool, unclaimed.
func (s *spool) has(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, ok := s.entries[name]
	return ok
}

// usedBytes is the room the spool holds now.
func (s *spool) usedBytes() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}

// follower reads a spooled NAR from the start, waiting for the writer
// where it is ahead of it.
type follower struct {
	e       *spooled
	f       *os.File
	off     int64
	release func()
	once    sync.Once
}

func (r *follower) Read(p []byte) (int, error) {
	e := r.e
	e.mu.Lock()
	for e.written <= r.off && !e.done {
		e.arrived.Wait()
	}
	avail, err := e.written-r.off, e.err
	e.mu.Unlock()
	if avail == 0 {
		if err != nil {
			return 0, fmt.Errorf("prefetching the NAR: %w", err)
		}
		return 0, io.EOF
	}
	n, rerr := r.f.ReadAt(p[:min(int64(len(p)), avail)], r.off)
	r.off += int64(n)
	if rerr == io.EOF && n > 0 {
		rerr = nil
	}
	return n, rerr
}

func (r *follower) Close() error {
	err := r.f.Close()
	r.once.Do(r.release)
	return err
}

// spoolDir makes a private directory for one run's spool under parent.
func spoolDir(parent string) (string, error) {
	return privateDir(parent, "nixcache-substituter-")
}

// uploadDir makes a private directory for one run's uploads under parent.
func uploadDir(parent string) (string, error) {
	return privateDir(parent, "nixcache-uploads-")
}

// privateDir makes a directory only we may use under parent, once parent
// and every directory above it are safe: a user who may rename entries in
// one of them could swap ours for a symlink to a directory of their
// choosing, and have the substituter (root, off NixOS) write there.
func privateDir(parent, prefix string) (string, error) {
	if err := os.MkdirAll(parent, 0o755); err != nil {
		return "", err
	}
	abs, err := filepath.Abs(parent)
	if err != nil {
		return "", err
	}
	for dir := abs; ; dir = filepath.Dir(dir) {
		if err := safeDir(dir); err != nil {
			return "", fmt.Errorf("%q: %w", parent, err)
		}
		if dir == filepath.Dir(dir) {
			break
		}
	}
	return os.MkdirTemp(parent, prefix)
}

// safeDir fails unless dir is ours or root's, and others may not rename its
// entries (writable by its owner alone, or sticky, as /tmp).
func safeDir(dir string) error {
	st, err := os.Stat(dir)
	if err != nil {
		return err
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	if uid := uint32(os.Geteuid()); sys.Uid != 0 && sys.Uid != uid {
		return fmt.Errorf("%s is uid %d's, who could swap the spool for a symlink: give --spool-dir a directory of root's (or this user's)", dir, sys.Uid)
	}
	if st.Mode().Perm()&0o022 != 0 && st.Mode()&os.ModeSticky == 0 {
		return fmt.Errorf("%s may be written by others (mode %04o, not sticky), who could swap the spool for a symlink: give --spool-dir a directory only its owner writes", dir, st.Mode().Perm())
	}
	return nil
}
