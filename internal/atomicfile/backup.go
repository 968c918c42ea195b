package atomicfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"
	"time"
)

// BackupSuffix precedes the time in a backup's name, so that an admin can
// find every copy nixcache made with one glob.
const BackupSuffix = ".nixcache-backup-"

// Backup copies data (path's current bytes) with the mode and owner in fi
// to PATH.nixcache-backup-YYYYMMDDTHHMMSS next to it, before path is
// replaced; it never replaces an older backup (a second one in the same
// second gets -2, -3...). It returns the backup's path.
func Backup(path string, data []byte, fi fs.FileInfo, now time.Time) (string, error) {
	base := path + BackupSuffix + now.Format("20060102T150405")
	name := base
	for i := 2; ; i++ {
		err := Create(name, data, fi.Mode().Perm())
		if err == nil {
			return name, KeepOwner(name, fi)
		}
		if !errors.Is(err, fs.ErrExist) || i > 100 {
			return "", err
		}
		name = fmt.Sprintf("%s-%d", base, i)
	}
}

// KeepOwner gives path the owner of the file it replaces (was; nil for a
// new file): a file written anew belongs to whoever runs nixcache.
func KeepOwner(path string, was fs.FileInfo) error {
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
