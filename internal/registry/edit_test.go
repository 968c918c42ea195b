package registry

import (
	"bytes"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
)

// An admin who keeps the registry in a repository and links it into place
// revokes a client in the repository's copy, which is what NixOS reads: the
// link stays a link.
func TestEditWritesThroughASymlink(t *testing.T) {
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	if err := os.Mkdir(repo, 0o755); err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(repo, "clients.toml")
	link := filepath.Join(dir, "clients.toml")
	k, _ := newKey(t, "")
	if err := Edit(target, true, func(r *Registry) error { return r.Add("build-01", mustParseKey(t, k), "", Pull) }); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("repo/clients.toml", link); err != nil {
		t.Fatal(err)
	}
	if err := Edit(link, false, func(r *Registry) error { return r.Remove("build-01") }); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Fatalf("the link was replaced: %v, %v", fi.Mode(), err)
	}
	r, err := Load(target)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Clients()) != 0 {
		t.Fatalf("the link's target still grants %v", r.Clients())
	}
}

func TestEditRefusesADanglingSymlink(t *testing.T) {
	dir := t.TempDir()
	link := filepath.Join(dir, "clients.toml")
	if err := os.Symlink("missing/clients.toml", link); err != nil {
		t.Fatal(err)
	}
	k, _ := newKey(t, "")
	err := Edit(link, true, func(r *Registry) error { return r.Add("a", mustParseKey(t, k), "", Pull) })
	if err == nil || !strings.Contains(err.Error(), "symlink to a missing file") {
		t.Fatalf("Edit through a dangling link: %v", err)
	}
	if fi, err := os.Lstat(link); err != nil || fi.Mode()&fs.ModeSymlink == 0 {
		t.Fatal("the dangling link was replaced")
	}
}

// The lock is a file only its owner can open: anyone who can open a file can
// flock it, and a lock held by another user would block every revocation.
func TestLockFileIsPrivateAndNeverFollowed(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	dir := t.TempDir()
	path := filepath.Join(dir, "clients.toml")
	k, _ := newKey(t, "")
	// Older versions left PATH.lock readable by everyone; it is not the lock.
	if err := os.WriteFile(path+".lock", nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := Edit(path, true, func(r *Registry) error { return r.Add("a", mustParseKey(t, k), "", Pull) }); err != nil {
		t.Fatal(err)
	}
	lock := filepath.Join(dir, ".clients.toml.lock")
	fi, err := os.Lstat(lock)
	if err != nil {
		t.Fatal(err)
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o600 {
		t.Fatalf("lock file is %v, want a regular file with mode 0600", fi.Mode())
	}

	// A lock file someone else made open to others, or a link, is refused
	// and left alone, and so is the registry.
	elsewhere := filepath.Join(dir, "elsewhere")
	before := readFile(t, path)
	for _, plant := range []func() error{
		func() error { return os.WriteFile(lock, nil, 0o644) },
		func() error { return os.Symlink(elsewhere, lock) },
		func() error { return syscall.Mkfifo(lock, 0o600) },
	} {
		if err := os.Remove(lock); err != nil {
			t.Fatal(err)
		}
		if err := plant(); err != nil {
			t.Fatal(err)
		}
		err := Edit(path, false, func(r *Registry) error { return r.Remove("a") })
		if !errors.Is(err, ErrUnsafeLock) {
			t.Fatalf("Edit with an unsafe lock file: %v, want ErrUnsafeLock", err)
		}
		if _, err := os.Lstat(elsewhere); !errors.Is(err, fs.ErrNotExist) {
			t.Fatal("locking followed a symlink")
		}
		if !bytes.Equal(readFile(t, path), before) {
			t.Fatal("the registry changed")
		}
	}
}
