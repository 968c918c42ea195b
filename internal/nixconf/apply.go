package nixconf

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/nixcache/nixcache/internal/atomicfile"
)

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
			b, err := atomicfile.Backup(path, current, fi, now)
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
		if err := atomicfile.KeepOwner(path, fi); err != nil {
			return backups, err
		}
	}
	return backups, nil
}
