package nixconf

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nixcache/nixcache/internal/atomicfile"
)

// backupSuffix precedes the time in a backup's name, so that an admin can
// find every copy nixcache made with one glob.
const backupSuffix = ".nixcache-backup-"

// Apply writes each change: first a backup copy of the existing file next to
// it (PATH.nixcache-backup-YYYYMMDDTHHMMSS, same mode and owner; returned so
// the caller can print it), then the new contents atomically, so that a Nix
// starting meanwhile reads the old file or the new, never half of one.
// Symlinked files are written at the resolved path, keeping the link. A file
// that no longer holds Change.Old is left alone: someone else edited it since
// the plan was made, and writing would lose their edit.
func Apply(changes []Change, now time.Time) (backups []string, err error) {
	for _, ch := range changes {
		path, err := resolve(ch.Path)
		if err != nil {
			return backups, err
		}
		current, err := os.ReadFile(path)
		exists := err == nil
		if err != nil && !errors.Is(err, fs.ErrNotExist) {
			return backups, err
		}
		if exists != ch.Exists || !bytes.Equal(current, ch.Old) {
			return backups, fmt.Errorf("%q changed since it was read; it was not written", ch.Path)
		}
		var fi fs.FileInfo
		if exists {
			if fi, err = os.Stat(path); err != nil {
				return backups, err
			}
			b, err := backup(path, current, fi, now)
			if err != nil {
				return backups, fmt.Errorf("backing up %q: %w", ch.Path, err)
			}
			backups = append(backups, b)
		} else if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return backups, err
		}
		if err := atomicfile.Write(path, ch.New, ch.Mode); err != nil {
			return backups, err
		}
		if err := keepOwner(path, fi); err != nil {
			return backups, err
		}
	}
	return backups, nil
}

// backup copies the file's bytes, mode and owner to a new file next to it; it
// never replaces an older backup.
func backup(path string, data []byte, fi fs.FileInfo, now time.Time) (string, error) {
	base := path + backupSuffix + now.Format("20060102T150405")
	name := base
	for i := 2; ; i++ {
		err := atomicfile.Create(name, data, fi.Mode().Perm())
		if err == nil {
			return name, keepOwner(name, fi)
		}
		if !errors.Is(err, fs.ErrExist) || i > 100 {
			return "", err
		}
		name = fmt.Sprintf("%s-%d", base, i)
	}
}

// keepOwner gives path the owner of the file it replaces: the new file is
// created by whoever runs nixcache.
func keepOwner(path string, was fs.FileInfo) error {
	if was == nil {
		return nil
	}
	old, ok := was.Sys().(*syscall.Stat_t)
	if !ok {
		return nil
	}
	fi, err := os.Stat(path)
	if err != nil {
		return err
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && (st.Uid != old.Uid || st.Gid != old.Gid) {
		return os.Chown(path, int(old.Uid), int(old.Gid))
	}
	return nil
}
