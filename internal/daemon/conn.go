package daemon

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/nix-community/go-nix/pkg/wire"
)

// DefaultSocketPath is where Nix's daemon listens unless told otherwise.
const DefaultSocketPath = "/nix/var/nix/daemon-socket/socket"

// SocketPath returns the socket Nix itself would use: NIX_DAEMON_SOCKET_PATH
// when set, the default otherwise.
func SocketPath() string {
	if p := os.Getenv("NIX_DAEMON_SOCKET_PATH"); p != "" {
		return p
	}
	return DefaultSocketPath
}

// Limits on what the other end may send. It is not always the local daemon:
// doctor asks an ssh-ng:// cache for its paths as root, so a malicious cache
// must not be able to make the client allocate without bound. Besides these
// caps, no length or count read from the wire allocates ahead of the bytes
// that actually arrive.
const (
	// maxStringLen bounds one string. Store paths are under 256 bytes and
	// signatures about 100; log lines and error messages are the longest
	// strings the daemon sends, and a MiB is more than a screenful.
	maxStringLen = 1 << 20
	// maxReplyLen bounds the bytes read for one operation, log messages
	// included. The largest reply is QueryAllValidPaths, 60 to 100 bytes a
	// path on the wire: 1 GiB lists over 10 M paths, more than the largest
	// stores hold, and stops a peer that streams forever.
	maxReplyLen = 1 << 30
	// stringChunk is the most a string's announced length allocates before
	// its bytes arrive; longer strings grow as they are read. Nearly every
	// string fits, so the common case is still one exact allocation.
	stringChunk = 4 << 10
)

// Conn is one connection to the daemon. Nix serves each connection in its own
// process, one operation at a time; a Conn is not safe for concurrent use.
type Conn struct {
	nc      io.ReadWriteCloser
	unwatch func() bool // stops closing nc when the Dial context ends
	in      *replyBudget
	r       *bufio.Reader // reads through in
	w       *bufio.Writer
	version Version

	// DaemonVersion is the protocol version the daemon announced.
	DaemonVersion Version
	// DaemonNixVersion is the daemon's Nix version ("2.24.9"), from protocol 1.33.
	DaemonNixVersion string
	// Trust is whether the daemon trusts this client, from protocol 1.35.
	Trust Trust
	// Log receives the daemon's log lines; nil discards them.
	Log func(line string)
}

// DialError says the daemon's socket could not be reached.
type DialError struct {
	Path string
	Err  error
}

func (e *DialError) Error() string {
	return fmt.Sprintf("cannot connect to the Nix daemon at %q: %v", e.Path, e.Err)
}
func (e *DialError) Unwrap() error { return e.Err }

// RemoteError is an error the daemon reported for an operation.
type RemoteError struct {
	Message string
	// Status is the exit status Nix attaches (before protocol 1.26) or 1.
	Status uint64
}

var ansiEscape = regexp.MustCompile("\x1b\\[[0-9;]*[A-Za-z]")

func (e *RemoteError) Error() string {
	return strings.TrimPrefix(ansiEscape.ReplaceAllString(e.Message, ""), "error: ")
}

// ProtocolError is a violation of the protocol by either side; the connection
// is unusable afterwards.
type ProtocolError struct{ Msg string }

func (e *ProtocolError) Error() string { return "Nix daemon protocol error: " + e.Msg }

// Dial connects to the daemon at socketPath and performs the handshake.
// Cancelling ctx aborts the handshake and any later operation on the Conn.
func Dial(ctx context.Context, socketPath string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", socketPath)
	// A daemon busy accepting has a short queue (Nix listens with a backlog
	// of 5, and Go connects without blocking): a full queue is EAGAIN, to
	// be tried again shortly, as a blocking connect would have waited.
	for wait := time.Millisecond; errors.Is(err, syscall.EAGAIN) && wait < 2*time.Second; wait *= 2 {
		select {
		case <-ctx.Done():
			return nil, &DialError{Path: socketPath, Err: ctx.Err()}
		case <-time.After(wait):
		}
		nc, err = d.DialContext(ctx, "unix", socketPath)
	}
	if err != nil {
		var op *net.OpError
		if errors.As(err, &op) {
			err = op.Err
		}
		var se *os.SyscallError
		if errors.As(err, &se) {
			err = se.Err
		}
		return nil, &DialError{Path: socketPath, Err: err}
	}
	return Handshake(ctx, nc)
}

// Handshake speaks the worker protocol over an established stream, such as
// `nix-daemon --stdio` at the other end of an SSH session (an ssh-ng://
// store). The Conn owns rwc and closes it.
func Handshake(ctx context.Context, rwc io.ReadWriteCloser) (*Conn, error) {
	c := newConn(rwc)
	stop := context.AfterFunc(ctx, func() { rwc.Close() })
	err := c.handshake()
	if !stop() {
		err = ctx.Err()
	}
	if err != nil {
		rwc.Close()
		return nil, err
	}
	c.unwatch = context.AfterFunc(ctx, func() { rwc.Close() })
	return c, nil
}

func newConn(rwc io.ReadWriteCloser) *Conn {
	in := &replyBudget{r: rwc, max: maxReplyLen, left: maxReplyLen}
	return &Conn{
		nc: rwc,
		in: in,
		r:  bufio.NewReaderSize(in, 64<<10),
		w:  bufio.NewWriterSize(rwc, 64<<10),
	}
}

// replyBudget fails a read once max bytes have been read since the last
// reset, which starts each reply. What the buffered reader fetched ahead
// of a reply counts towards the one before, so a reply may read up to the
// buffer's size more than max.
type replyBudget struct {
	r         io.Reader
	max, left int64
}

var errReplyTooLong = &ProtocolError{fmt.Sprintf("a reply is longer than %d MiB", maxReplyLen>>20)}

func (b *replyBudget) Read(p []byte) (int, error) {
	if b.left <= 0 {
		return 0, errReplyTooLong
	}
	if int64(len(p)) > b.left {
		p = p[:b.left]
	}
	n, err := b.r.Read(p)
	b.left -= int64(n)
	return n, err
}

func (b *replyBudget) reset() { b.left = b.max }

// Close ends the connection; the daemon process serving it exits.
func (c *Conn) Close() error {
	if c.unwatch != nil {
		c.unwatch()
	}
	return c.nc.Close()
}

// Version is the negotiated protocol version: the lower of the two sides'.
func (c *Conn) Version() Version { return c.version }

func (c *Conn) handshake() error {
	if err := wire.WriteUint64(c.w, workerMagic1); err != nil {
		return err
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	magic, err := wire.ReadUint64(c.r)
	if err != nil {
		return fmt.Errorf("reading the daemon's greeting: %w", err)
	}
	if magic != workerMagic2 {
		return &ProtocolError{"the socket did not answer as a Nix daemon (wrong magic number)"}
	}
	v, err := wire.ReadUint64(c.r)
	if err != nil {
		return err
	}
	c.DaemonVersion = Version(v)
	if c.DaemonVersion.Major() != ClientVersion.Major() || c.DaemonVersion < MinVersion {
		return &ProtocolError{fmt.Sprintf("daemon speaks protocol %s; nixcache needs %d.%d or later (Nix 2.3+)",
			c.DaemonVersion, MinVersion.Major(), MinVersion.Minor())}
	}
	c.version = min(c.DaemonVersion, ClientVersion)

	// Both sides decide each optional field by the other side's version,
	// which amounts to the negotiated minimum.
	w := &errWriter{w: c.w}
	w.uint(uint64(ClientVersion))
	w.uint(0)     // obsolete CPU affinity: none (since 1.14)
	w.bool(false) // obsolete reserveSpace (since 1.11)
	if w.err != nil {
		return w.err
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	if c.version.Minor() >= 33 {
		if c.DaemonNixVersion, err = c.readString(); err != nil {
			return err
		}
	}
	if c.version.Minor() >= 35 {
		t, err := wire.ReadUint64(c.r)
		if err != nil {
			return err
		}
		switch t {
		case 0:
			c.Trust = TrustUnknown
		case 1:
			c.Trust = Trusted
		case 2:
			c.Trust = NotTrusted
		default:
			return &ProtocolError{fmt.Sprintf("invalid trust flag %d", t)}
		}
	}
	return c.processStderr()
}

// processStderr reads the daemon's messages up to the end of an operation's
// log. A *RemoteError means the operation failed but the connection is fine.
func (c *Conn) processStderr() error {
	for {
		msg, err := wire.ReadUint64(c.r)
		if err != nil {
			return c.readErr(err)
		}
		switch msg {
		case stderrLast:
			return nil
		case stderrError:
			return c.readError()
		case stderrNext:
			s, err := c.readString()
			if err != nil {
				return c.readErr(err)
			}
			c.log(strings.TrimSuffix(s, "\n"))
		case stderrWrite:
			if err := c.skipString(); err != nil {
				return c.readErr(err)
			}
		case stderrRead:
			// Only operations that upload data make the daemon ask for it.
			return &ProtocolError{"daemon asked for data that no nixcache operation sends"}
		case stderrStartActivity:
			// id, level, type, text, fields, parent
			if err := c.skipUints(3); err != nil {
				return err
			}
			s, err := c.readString()
			if err != nil {
				return c.readErr(err)
			}
			if err := c.skipFields(); err != nil {
				return err
			}
			if err := c.skipUints(1); err != nil {
				return err
			}
			if s != "" {
				c.log(s)
			}
		case stderrStopActivity:
			if err := c.skipUints(1); err != nil {
				return err
			}
		case stderrResult:
			// id, type, fields
			if err := c.skipUints(2); err != nil {
				return err
			}
			if err := c.skipFields(); err != nil {
				return err
			}
		default:
			return &ProtocolError{fmt.Sprintf("unknown stderr message 0x%x", msg)}
		}
	}
}

func (c *Conn) readError() error {
	if c.version.Minor() < 26 {
		msg, err := c.readString()
		if err != nil {
			return c.readErr(err)
		}
		status, err := wire.ReadUint64(c.r)
		if err != nil {
			return c.readErr(err)
		}
		return &RemoteError{Message: msg, Status: status}
	}
	// Structured error: type ("Error"), level, name (unused), message,
	// position (always absent), then traces, each a position and a hint.
	if err := c.skipString(); err != nil {
		return c.readErr(err)
	}
	if err := c.skipUints(1); err != nil {
		return err
	}
	if err := c.skipString(); err != nil {
		return c.readErr(err)
	}
	msg, err := c.readString()
	if err != nil {
		return c.readErr(err)
	}
	if err := c.expectNoPos(); err != nil {
		return err
	}
	traces, err := wire.ReadUint64(c.r)
	if err != nil {
		return c.readErr(err)
	}
	for range traces {
		if err := c.expectNoPos(); err != nil {
			return err
		}
		if err := c.skipString(); err != nil {
			return c.readErr(err)
		}
	}
	return &RemoteError{Message: msg, Status: 1}
}

func (c *Conn) expectNoPos() error {
	havePos, err := wire.ReadUint64(c.r)
	if err != nil {
		return c.readErr(err)
	}
	if havePos != 0 {
		return &ProtocolError{"error with a source position, which the daemon never sends"}
	}
	return nil
}

func (c *Conn) skipUints(n int) error {
	for range n {
		if _, err := wire.ReadUint64(c.r); err != nil {
			return c.readErr(err)
		}
	}
	return nil
}

func (c *Conn) skipFields() error {
	n, err := wire.ReadUint64(c.r)
	if err != nil {
		return c.readErr(err)
	}
	for range n {
		typ, err := wire.ReadUint64(c.r)
		if err != nil {
			return c.readErr(err)
		}
		switch typ {
		case 0:
			err = c.skipUints(1)
		case 1:
			err = c.readErr(c.skipString())
		default:
			return &ProtocolError{fmt.Sprintf("unknown log field type %d", typ)}
		}
		if err != nil {
			return err
		}
	}
	return nil
}

func (c *Conn) log(s string) {
	if c.Log != nil {
		c.Log(ansiEscape.ReplaceAllString(s, ""))
	}
}

// readBool is wire.ReadBool with a value other than 0 or 1 reported as the
// protocol error it is, which callers treat as fatal to the connection.
func (c *Conn) readBool() (bool, error) {
	n, err := wire.ReadUint64(c.r)
	if err != nil {
		return false, err
	}
	if n > 1 {
		return false, &ProtocolError{fmt.Sprintf("%d where a boolean was expected", n)}
	}
	return n == 1, nil
}

// readString reads one length-prefixed, zero-padded string. go-nix's
// wire.ReadString does the same but allocates a 1 KiB scratch buffer per
// string to skip the padding, which was a quarter of `sign --all`'s CPU time.
func (c *Conn) readString() (string, error) {
	n, err := c.readStringLen()
	if err != nil {
		return "", err
	}
	padded := (n + 7) &^ 7
	buf := make([]byte, 0, min(padded, stringChunk))
	for len(buf) < padded {
		if len(buf) == cap(buf) {
			// Doubling keeps what a long string allocates within twice
			// what has arrived.
			buf = slices.Grow(buf, min(len(buf), padded-len(buf)))
		}
		m, err := io.ReadFull(c.r, buf[len(buf):min(cap(buf), padded)])
		buf = buf[:len(buf)+m]
		if err != nil {
			return "", err
		}
	}
	if err := checkPadding(buf[n:]); err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// skipString reads past a string the client has no use for, without
// keeping it.
func (c *Conn) skipString() error {
	n, err := c.readStringLen()
	if err != nil {
		return err
	}
	if _, err := c.r.Discard(n); err != nil {
		return err
	}
	var pad [8]byte
	p := pad[:(8-n%8)%8]
	if _, err := io.ReadFull(c.r, p); err != nil {
		return err
	}
	return checkPadding(p)
}

func (c *Conn) readStringLen() (int, error) {
	n, err := wire.ReadUint64(c.r)
	if err != nil {
		return 0, err
	}
	if n > maxStringLen {
		return 0, &ProtocolError{fmt.Sprintf("string of %d bytes is too long", n)}
	}
	return int(n), nil
}

func checkPadding(pad []byte) error {
	for _, b := range pad {
		if b != 0 {
			return &ProtocolError{"string padding is not zero"}
		}
	}
	return nil
}

// readErr turns a short read into an error that says what happened.
func (c *Conn) readErr(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return &ProtocolError{"the daemon closed the connection"}
	}
	return err
}

// errWriter lets a request be written as a sequence of fields with one
// error check at the end.
type errWriter struct {
	w   io.Writer
	err error
}

func (e *errWriter) uint(n uint64) {
	if e.err == nil {
		e.err = wire.WriteUint64(e.w, n)
	}
}

func (e *errWriter) bool(b bool) {
	if e.err == nil {
		e.err = wire.WriteBool(e.w, b)
	}
}

func (e *errWriter) string(s string) {
	if e.err == nil {
		e.err = wire.WriteString(e.w, s)
	}
}

func (e *errWriter) strings(ss []string) {
	e.uint(uint64(len(ss)))
	for _, s := range ss {
		e.string(s)
	}
}
