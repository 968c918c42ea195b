package substituter

import (
	"crypto/sha256"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// uploadTTL is how long a NAR file Nix uploaded waits for the narinfo that
// names it: Nix sends that narinfo right after the NAR, or never (it
// failed in between).
const uploadTTL = time.Hour

// DefaultUploadBytes bounds the NAR files Nix's HTTP store uploads that
// wait on disk for their narinfo: the cache's default NAR size limit.
const DefaultUploadBytes = 4 << 30

// uploadSpool holds the NAR files `nix copy --to http://...` PUTs until the
// PUT of the narinfo that names them, each in a private file, within a
// budget of bytes.
type uploadSpool struct {
	dir    string
	budget int64
	now    func() time.Time

	mu    sync.Mutex
	used  int64
	files map[string]*uploadedNAR // by file name under nar/
}

type uploadedNAR struct {
	path     string
	size     int64
	received time.Time
}

func newUploadSpool(dir string, budget int64) *uploadSpool {
	return &uploadSpool{dir: dir, budget: budget, now: time.Now, files: map[string]*uploadedNAR{}}
}

// uploadNARFile is a NAR file's name as Nix's binary-cache store writes it:
// FILEHASH.nar and the compression's extension, FILEHASH the nix32
// SHA-256 of the file. ok is false for any other name.
func uploadNARFile(name string) (fileHash, ext string, ok bool) {
	h, ext, found := strings.Cut(name, ".nar")
	if !found || !isNix32(h, narHashLen) || (ext != "" && ext[0] != '.') || strings.ContainsAny(ext, "/\\") {
		return "", "", false
	}
	return h, ext, true
}

// compressionOf is the narinfo Compression an extension goes with; ok
// false for one this substituter cannot decompress.
func compressionOf(ext string) (string, bool) {
	switch ext {
	case "":
		return "none", true
	case ".xz":
		return "xz", true
	case ".zst":
		return "zstd", true
	case ".bz2":
		return "bzip2", true
	}
	return "", false
}

// errCompression is Nix's advice when it used a compression that is not
// read here.
const errCompression = "nixcache substituter: it reads NARs compressed with xz, zstd or bzip2, or not at all: use ?compression=zstd or none"

// uploadError is an answer for Nix: its status and one line.
type uploadError struct {
	status int
	msg    string
}

func (e *uploadError) Error() string { return e.msg }

func uploadErrorf(status int, format string, args ...any) *uploadError {
	return &uploadError{status, "nixcache substituter: " + fmt.Sprintf(format, args...)}
}

// put writes the NAR file name from body, of length bytes (-1: unknown),
// and checks that its content hashes to its name. One of the same name
// already here is replaced.
func (u *uploadSpool) put(name, fileHash string, body io.Reader, length int64) error {
	u.mu.Lock()
	u.expireLocked()
	room := u.budget - u.used
	limit := room
	if length >= 0 {
		limit = length
	}
	if limit > room || room <= 0 {
		u.mu.Unlock()
		return uploadErrorf(http.StatusRequestEntityTooLarge, "the NAR files waiting for their narinfos would take more than %d bytes (--upload-spool-bytes)", u.budget)
	}
	u.used += limit
	u.mu.Unlock()
	size, path, err := u.write(fileHash, body, limit)
	u.mu.Lock()
	defer u.mu.Unlock()
	u.used -= limit
	if err != nil {
		return err
	}
	if old := u.files[name]; old != nil {
		u.dropLocked(name, old)
	}
	u.files[name] = &uploadedNAR{path: path, size: size, received: u.now()}
	u.used += size
	return nil
}

func (u *uploadSpool) write(fileHash string, body io.Reader, limit int64) (int64, string, error) {
	// CreateTemp makes the file 0600, in the spool's private directory.
	f, err := os.CreateTemp(u.dir, "upload-")
	if err != nil {
		return 0, "", err
	}
	h := sha256.New()
	n, err := io.CopyBuffer(io.MultiWriter(f, h), io.LimitReader(body, limit+1), make([]byte, 64<<10))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	switch {
	case err != nil:
		err = uploadErrorf(http.StatusBadRequest, "receiving the NAR file: %v", err)
	case n > limit:
		err = uploadErrorf(http.StatusRequestEntityTooLarge, "the NAR file is longer than its Content-Length, or than the %d bytes the upload spool has room for (--upload-spool-bytes)", u.budget)
	case nixbase32.EncodeToString(h.Sum(nil)) != fileHash:
		err = uploadErrorf(http.StatusBadRequest, "the NAR file's SHA-256 is not the one its name says")
	}
	if err != nil {
		os.Remove(f.Name())
		return 0, "", err
	}
	return n, f.Name(), nil
}

// open opens the NAR file name for reading; it stays in the spool until
// done (so that Nix, retrying a narinfo, finds it again).
func (u *uploadSpool) open(name string) (*os.File, int64, error) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.expireLocked()
	e := u.files[name]
	if e == nil {
		return nil, 0, os.ErrNotExist
	}
	f, err := os.Open(e.path)
	return f, e.size, err
}

// has reports whether the NAR file name is here (Nix asks before sending
// it, and does not send what is there).
func (u *uploadSpool) has(name string) (int64, bool) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.expireLocked()
	e := u.files[name]
	if e == nil {
		return 0, false
	}
	return e.size, true
}

// done deletes the NAR file name: its path was uploaded.
func (u *uploadSpool) done(name string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if e := u.files[name]; e != nil {
		u.dropLocked(name, e)
	}
}

func (u *uploadSpool) expireLocked() {
	for name, e := range u.files {
		if u.now().Sub(e.received) > uploadTTL {
			u.dropLocked(name, e)
		}
	}
}

// dropLocked deletes a file; one being read is read to its end (the
// reader holds it open).
func (u *uploadSpool) dropLocked(name string, e *uploadedNAR) {
	delete(u.files, name)
	os.Remove(e.path)
	u.used -= e.size
}

// removeAll deletes every file (at Close).
func (u *uploadSpool) removeAll() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	clear(u.files)
	u.used = 0
	return os.RemoveAll(u.dir)
}
