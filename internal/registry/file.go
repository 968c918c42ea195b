package registry

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nixcache/nixcache/internal/atomicfile"
)

// DefaultPath is the registry's location on a server unless told otherwise.
const DefaultPath = "/var/lib/nixcache/clients.toml"

// Mode is the registry's permission: it holds only public keys.
const Mode fs.FileMode = 0o644

// maxSize caps the file: tens of thousands of clients fit.
const maxSize = 4 << 20

// ErrNoRegistry is returned when the registry file does not exist.
var ErrNoRegistry = errors.New("no clients registry")

// Load reads the registry at path.
func Load(path string) (*Registry, error) {
	data, _, err := atomicfile.ReadCapped(path, maxSize, "a clients registry")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w at %q", ErrNoRegistry, path)
	}
	if err != nil {
		return nil, err
	}
	r, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", path, err)
	}
	return r, nil
}

// LockTimeout bounds how long Edit waits for another edit to finish.
var LockTimeout = 10 * time.Second

// ErrLocked is returned when another process holds the registry's lock for
// longer than LockTimeout.
var ErrLocked = errors.New("the registry is being edited by another process")

// Edit changes the registry at path: it takes the registry's lock, reads
// the file, applies change and replaces the file atomically with mode
// 0644. Two admins editing at once are serialised, so neither loses the
// other's change. When create is true a missing registry (and its
// directory) is created, starting empty; otherwise it is an error. On any
// error the file is left exactly as it was.
func Edit(path string, create bool, change func(*Registry) error) error {
	if !create {
		if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w at %q", ErrNoRegistry, path)
		}
	} else if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	unlock, err := lock(path)
	if err != nil {
		return err
	}
	defer unlock()
	r, err := Load(path)
	if errors.Is(err, ErrNoRegistry) && create {
		r, err = &Registry{}, nil
	}
	if err != nil {
		return err
	}
	if err := change(r); err != nil {
		return err
	}
	return atomicfile.Write(path, r.Marshal(), Mode)
}

// lock takes an exclusive flock on PATH.lock, a file next to the registry
// that is never replaced (the registry itself is, by each atomic write, so
// a lock on it would protect nothing). The lock file stays behind, empty.
func lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path+".lock", os.O_RDONLY|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(LockTimeout)
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) || time.Now().After(deadline) {
			f.Close()
			if errors.Is(err, syscall.EWOULDBLOCK) {
				return nil, fmt.Errorf("%w (%q is locked)", ErrLocked, path+".lock")
			}
			return nil, fmt.Errorf("locking %q: %w", path+".lock", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
