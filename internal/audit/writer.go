package audit

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"regexp"
	"sync"
	"syscall"
	"unicode/utf8"
)

// MaxLine bounds one record's line, newline included. Every record within
// the field limits below fits, even one whose strings are all control
// characters (each escaped to six bytes by JSON).
const MaxLine = 64 << 10

// Field limits. A record over one of them is refused, not truncated: a
// truncated path or client name in an audit log would be a lie.
const (
	maxClient  = 255
	maxKey     = 64
	maxRole    = 16
	maxRequest = 256
	maxPath    = 4096
)

// fingerprintPattern is an SSH key's SHA256 fingerprint as ssh-keygen -l
// and sshd print it. Key is checked against it so that no record can carry
// key material, whoever fills it in.
var fingerprintPattern = regexp.MustCompile(`^SHA256:[A-Za-z0-9+/]{43}$`)

// Validate checks a record before it is written or after it is read:
// time and a known op present, strings within their limits, the key a
// fingerprint (or empty), numbers sane.
func (r Record) Validate() error {
	if r.Time.IsZero() {
		return errors.New("the record has no time")
	}
	if y := r.Time.UTC().Year(); y < 1 || y > 9999 {
		// RFC 3339, and so JSON's time, has four-digit years.
		return errors.New("the record's time is not between the years 1 and 9999")
	}
	switch r.Op {
	case OpNarinfo, OpNar, OpUpload, OpMissing, OpRefused, OpSession:
	case "":
		return errors.New("the record has no op")
	default:
		return fmt.Errorf("the record's op %q is none of narinfo, nar, upload, missing, refused, session", clip(r.Op))
	}
	for _, f := range []struct {
		name, value string
		max         int
	}{
		{"client", r.Client, maxClient},
		{"role", r.Role, maxRole},
		{"request", r.Request, maxRequest},
		{"path", r.Path, maxPath},
	} {
		if len(f.value) > f.max {
			return fmt.Errorf("the record's %s is %d bytes, more than %d", f.name, len(f.value), f.max)
		}
		if !utf8.ValidString(f.value) {
			// JSON would replace the invalid bytes: the line would not
			// say what happened.
			return fmt.Errorf("the record's %s is not valid UTF-8", f.name)
		}
	}
	if r.Key != "" && !fingerprintPattern.MatchString(r.Key) {
		return errors.New("the record's key is not an SSH key fingerprint (SHA256:...)")
	}
	if r.Bytes < 0 {
		return errors.New("the record's bytes are negative")
	}
	if r.Status < 0 || r.Status > 999 {
		return fmt.Errorf("the record's status %d is not an HTTP status", r.Status)
	}
	if r.Duration < 0 || math.IsNaN(r.Duration) || math.IsInf(r.Duration, 0) {
		return errors.New("the record's duration is not a number of milliseconds")
	}
	return nil
}

// clip shortens a bad value quoted in an error.
func clip(s string) string {
	if len(s) > 32 {
		return s[:32] + "..."
	}
	return s
}

// Writer writes records as JSON lines, each in one Write call on the
// underlying writer, so that a file opened O_APPEND gets each line whole
// (one write(2)) and concurrent records never interleave.
type Writer struct {
	mu     sync.Mutex
	w      io.Writer
	closer io.Closer
}

// NewWriter writes records to w (standard output under systemd: the
// journal).
func NewWriter(w io.Writer) *Writer { return &Writer{w: w} }

// OpenFile opens the audit log at path for appending, creating it with mode
// 0640. It refuses a symlink (O_NOFOLLOW), anything but a regular file, and
// a file others may write to (anyone could add lines).
func OpenFile(path string) (*Writer, error) {
	// O_NONBLOCK: a FIFO planted at path must not hang the open; the flag
	// means nothing to a regular file.
	flags := os.O_WRONLY | os.O_APPEND | syscall.O_NOFOLLOW | syscall.O_NONBLOCK | syscall.O_CLOEXEC
	f, err := os.OpenFile(path, flags|os.O_CREATE|os.O_EXCL, 0o640)
	created := err == nil
	if errors.Is(err, os.ErrExist) {
		f, err = os.OpenFile(path, flags, 0)
	}
	if err != nil {
		if errors.Is(err, syscall.ELOOP) {
			return nil, fmt.Errorf("the audit log %q is a symlink: give the file itself", path)
		}
		return nil, fmt.Errorf("open the audit log: %w", err)
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("open the audit log: %w", err)
	}
	switch {
	case !st.Mode().IsRegular():
		f.Close()
		return nil, fmt.Errorf("the audit log %q is not a regular file", path)
	case st.Mode().Perm()&0o002 != 0:
		f.Close()
		return nil, fmt.Errorf("the audit log %q is writable by every user: chmod o-w it", path)
	}
	if created {
		// The umask may have taken bits from 0640; the group is the one
		// meant to read the log.
		if err := f.Chmod(0o640); err != nil {
			f.Close()
			return nil, fmt.Errorf("open the audit log: %w", err)
		}
	}
	return &Writer{w: f, closer: f}, nil
}

// Marshal is a record's line, newline included.
func Marshal(r Record) ([]byte, error) {
	if err := r.Validate(); err != nil {
		return nil, err
	}
	r.Time = r.Time.UTC()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(r); err != nil {
		return nil, fmt.Errorf("encode the record: %w", err)
	}
	line := buf.Bytes()
	// JSON escapes every control character in a string, so the encoder's
	// own newline is the only one; checked anyway, since one stray newline
	// would let a field forge a record.
	if bytes.IndexByte(line, '\n') != len(line)-1 || bytes.IndexByte(line, '\r') >= 0 {
		return nil, errors.New("the record's line contains a line break")
	}
	if len(line) > MaxLine {
		return nil, fmt.Errorf("the record's line is %d bytes, more than %d", len(line), MaxLine)
	}
	return line, nil
}

// Write writes one record as one line. A record that fails Validate is
// refused and nothing is written.
func (w *Writer) Write(r Record) error {
	line, err := Marshal(r)
	if err != nil {
		return err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	n, err := w.w.Write(line)
	if err == nil && n != len(line) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return fmt.Errorf("write the audit log: %w", err)
	}
	return nil
}

// Close closes the file OpenFile opened; a Writer made by NewWriter leaves
// its writer open.
func (w *Writer) Close() error {
	if w.closer == nil {
		return nil
	}
	return w.closer.Close()
}
