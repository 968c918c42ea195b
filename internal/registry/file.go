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
	r, _, err := load(path)
	return r, err
}

func load(path string) (*Registry, fs.FileInfo, error) {
	data, fi, err := atomicfile.ReadCapped(path, maxSize, "a clients registry")
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, fmt.Errorf("%w at %q", ErrNoRegistry, path)
	}
	if err != nil {
		return nil, nil, err
	}
	r, err := Parse(data)
	if err != nil {
		return nil, nil, fmt.Errorf("%q: %w", path, err)
	}
	return r, fi, nil
}

// LockTimeout bounds how long Edit waits for another edit to finish.
var LockTimeout = 10 * time.Second

// ErrLocked is returned when another process holds the registry's lock for
// longer than LockTimeout.
var ErrLocked = errors.New("the registry is being edited by another process")

// ErrUnsafeLock is returned when the lock file could be opened by another
// user, who could then hold the lock and block every edit.
var ErrUnsafeLock = errors.New("the registry's lock file is not private to its owner")

// Edit changes the registry at path: it takes the registry's lock, reads
// the file, applies change and replaces the file atomically with mode
// 0644, keeping its owner. Two admins editing at once are serialised, so
// neither loses the other's change. A symlinked registry is edited where
// the link points, and stays a link: an admin who keeps the registry in a
// repository and links it into place revokes a client in the copy NixOS
// reads. When create is true a missing registry (and its directory) is
// created, starting empty; otherwise it is an error. On any error the file
// is left exactly as it was.
func Edit(path string, create bool, change func(*Registry) error) error {
	target, err := resolve(path)
	if err != nil {
		return err
	}
	if !create {
		if _, err := os.Stat(target); errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("%w at %q", ErrNoRegistry, path)
		}
	} else if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
		return err
	}
	unlock, err := lock(target)
	if err != nil {
		return err
	}
	defer unlock()
	r, fi, err := load(target)
	if errors.Is(err, ErrNoRegistry) && create {
		r, err = &Registry{}, nil
	}
	if err != nil {
		return err
	}
	if err := change(r); err != nil {
		return err
	}
	if err := atomicfile.Write(target, r.Marshal(), Mode); err != nil {
		return err
	}
	return atomicfile.KeepOwner(target, fi)
}

// resolve follows symlinks to the file they name; a registry that does not
// exist yet is resolved through its directory.
func resolve(path string) (string, error) {
	r, err := filepath.EvalSymlinks(path)
	if err == nil {
		return r, nil
	}
	if _, lerr := os.Lstat(path); lerr == nil {
		return "", fmt.Errorf("%q is a symlink to a missing file", path)
	}
	dir, err := filepath.EvalSymlinks(filepath.Dir(path))
	if errors.Is(err, fs.ErrNotExist) {
		return path, nil
	}
	if err != nil {
		return "", err
	}
	return filepath.Join(dir, filepath.Base(path)), nil
}

// lockName is the registry's lock file: a hidden file next to it that is
// never replaced (the registry itself is, by each atomic write, so a lock on
// it would protect nothing). Older versions locked PATH.lock, created
// readable by everyone; that file is no longer used, so a lock held on it
// blocks nothing.
func lockName(path string) string {
	return filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".lock")
}

// lock takes an exclusive flock on the registry's lock file, which stays
// behind, empty. flock needs only a descriptor, which anyone who can open a
// file gets: the lock file is created 0600, never followed if it is a
// symlink, and refused if another user could open it.
func lock(path string) (unlock func(), err error) {
	name := lockName(path)
	f, err := os.OpenFile(name, os.O_RDONLY|os.O_CREATE|syscall.O_NOFOLLOW|syscall.O_NONBLOCK, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("%w: %q is a symlink", ErrUnsafeLock, name)
	}
	if err != nil {
		return nil, err
	}
	if err := checkPrivate(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("%w: %q %s", ErrUnsafeLock, name, err)
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
				return nil, fmt.Errorf("%w (%q is locked)", ErrLocked, name)
			}
			return nil, fmt.Errorf("locking %q: %w", name, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// checkPrivate says why another user could open the lock file, if one could.
func checkPrivate(f *os.File) error {
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return errors.New("is not a regular file")
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("has mode %04o, open to other users", fi.Mode().Perm())
	case ok && int(st.Uid) != os.Geteuid():
		return fmt.Errorf("belongs to user %d, not to you", st.Uid)
	}
	return nil
}
