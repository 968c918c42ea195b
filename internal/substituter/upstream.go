package substituter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixcache/nixcache/internal/binarycache"
	"github.com/nixcache/nixcache/internal/sshconf"
)

// ChannelCommand is the exec command of the channel nixcache serve answers.
const ChannelCommand = binarycache.ChannelCommand

// The bounds on waiting for the cache. A build must not wait long on a cache
// that is gone: the same 5 s as ssh's ConnectTimeout in join's settings, and
// a dead connection noticed within keepaliveInterval+keepaliveTimeout, as
// with its ServerAliveInterval 5 and ServerAliveCountMax 3.
const (
	connectTimeout    = 5 * time.Second
	keepaliveInterval = 5 * time.Second
	keepaliveTimeout  = 10 * time.Second
	minBackoff        = 500 * time.Millisecond
	maxBackoff        = 30 * time.Second
	// A connection that lived this long was a good one: the next attempt
	// starts again from minBackoff.
	stableAfter = time.Minute
)

// ErrDown is returned while there is no connection to the cache.
var ErrDown = errors.New("no connection to the cache")

// HostKeyError says the cache presented a host key that is not the one
// pinned for it, or that none is pinned. Either way nothing is sent to it:
// the key pinned by join is the only one ever trusted.
type HostKeyError struct {
	Target     sshconf.Target
	Presented  ssh.PublicKey
	PinnedFile string
	// Mismatch: a key is pinned and this is not it. Otherwise none is.
	Mismatch bool
}

func (e *HostKeyError) Error() string {
	if e.Mismatch {
		return fmt.Sprintf("host key of %s is not the one pinned in %q: the server presents %s",
			e.Target.Addr(), e.PinnedFile, sshconf.Fingerprint(e.Presented))
	}
	return fmt.Sprintf("no host key is pinned for %s in %q", e.Target.KnownHostsName(), e.PinnedFile)
}

// AuthError says the cache refused the daemon's key.
type AuthError struct {
	Target sshconf.Target
	Err    error
}

func (e *AuthError) Error() string {
	return fmt.Sprintf("the cache account %s refused this machine's key: %v", e.Target, e.Err)
}

func (e *AuthError) Unwrap() error { return e.Err }

// Fatal reports whether err is one that trying again cannot fix: the wrong
// host key or a refused login.
func Fatal(err error) bool {
	var hk *HostKeyError
	var auth *AuthError
	return errors.As(err, &hk) || errors.As(err, &auth)
}

// Upstream is the one SSH connection to the cache, made again in the
// background whenever it is lost, and the channels opened on it.
type Upstream struct {
	target sshconf.Target
	config *ssh.ClientConfig
	logf   func(format string, args ...any)

	mu     sync.Mutex
	client *ssh.Client // nil while down
	// onUp runs after each new connection (the HTTP transport forgets
	// its idle channels, which died with the old one).
	onUp func()
}

// UpstreamConfig says where the cache is and what proves who is who.
type UpstreamConfig struct {
	Target sshconf.Target
	// Signer is the daemon's key (sshconf.Dir.KeyFile).
	Signer ssh.Signer
	// KnownHosts is the file of pinned host keys (sshconf.Dir.KnownHosts).
	KnownHosts string
	// Logf reports connection state changes.
	Logf func(format string, args ...any)
}

// NewUpstream checks that a host key is pinned for the cache; it does not
// connect (Run does).
func NewUpstream(c UpstreamConfig) (*Upstream, error) {
	pinned, err := sshconf.Pinned(c.KnownHosts, c.Target)
	if err != nil {
		return nil, err
	}
	if pinned == nil {
		return nil, &HostKeyError{Target: c.Target, PinnedFile: c.KnownHosts}
	}
	check, err := hostKeyCallback(c.KnownHosts, c.Target)
	if err != nil {
		return nil, err
	}
	cfg := &ssh.ClientConfig{
		User:            c.Target.User,
		Auth:            []ssh.AuthMethod{ssh.PublicKeys(c.Signer)},
		HostKeyCallback: check,
		// Only the pinned key's kind: offered another kind first, the
		// server would present a key that is not pinned.
		HostKeyAlgorithms: algorithmsFor(pinned),
		Timeout:           connectTimeout,
	}
	return &Upstream{target: c.Target, config: cfg, logf: c.Logf}, nil
}

func algorithmsFor(k ssh.PublicKey) []string {
	if k.Type() == ssh.KeyAlgoRSA {
		return []string{ssh.KeyAlgoRSASHA512, ssh.KeyAlgoRSASHA256}
	}
	return []string{k.Type()}
}

// Connect makes the first connection: an error that trying again cannot
// fix (see Fatal) is returned; any other is logged and left to Run.
func (u *Upstream) Connect(ctx context.Context) error {
	c, err := u.dial(ctx)
	if err != nil {
		if Fatal(err) {
			return err
		}
		u.logf("cannot reach the cache %s: %v; trying again in the background", u.target, err)
		return nil
	}
	u.setClient(c)
	return nil
}

// Run keeps the connection up until ctx ends: it watches it with
// keepalives and makes it again when it is lost, backing off exponentially
// while attempts fail.
func (u *Upstream) Run(ctx context.Context) {
	backoff := minBackoff
	for ctx.Err() == nil {
		c := u.current()
		if c == nil {
			var err error
			if c, err = u.dial(ctx); err != nil {
				if ctx.Err() != nil {
					return
				}
				u.logf("cannot reach the cache %s: %v; next attempt in %s", u.target, err, backoff)
				select {
				case <-ctx.Done():
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, maxBackoff)
				continue
			}
			u.setClient(c)
		}
		start := time.Now()
		err := u.watch(ctx, c)
		u.mu.Lock()
		u.client = nil
		u.mu.Unlock()
		c.Close()
		if ctx.Err() != nil {
			return
		}
		u.logf("lost the connection to the cache %s: %v", u.target, err)
		if time.Since(start) > stableAfter {
			backoff = minBackoff
		}
	}
}

func (u *Upstream) setClient(c *ssh.Client) {
	u.mu.Lock()
	u.client = c
	onUp := u.onUp
	u.mu.Unlock()
	u.logf("connected to the cache %s", u.target)
	if onUp != nil {
		onUp()
	}
}

func (u *Upstream) current() *ssh.Client {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.client
}

// Up reports whether the connection is up, as far as is known.
func (u *Upstream) Up() bool { return u.current() != nil }

// drop closes c, if it is still the connection, when it stalled (a channel
// not opened in time, a narinfo not answered in time): it is treated as
// lost at once rather than after the keepalives give up, so that the
// requests after it are answered at once.
func (u *Upstream) drop(c *ssh.Client, why string) {
	if c != nil && u.current() == c {
		u.logf("the connection to the cache %s stalled (%s); dropping it", u.target, why)
		c.Close()
	}
}

func (u *Upstream) dial(ctx context.Context) (*ssh.Client, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", u.target.Addr())
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	nc.SetDeadline(deadline)
	conn, chans, reqs, err := ssh.NewClientConn(nc, u.target.Addr(), u.config)
	if err != nil {
		nc.Close()
		var hk *HostKeyError
		if errors.As(err, &hk) {
			return nil, hk
		}
		if isAuthFailure(err) {
			return nil, &AuthError{Target: u.target, Err: err}
		}
		return nil, err
	}
	nc.SetDeadline(time.Time{})
	return ssh.NewClient(conn, chans, reqs), nil
}

// isAuthFailure recognises x/crypto/ssh's refused login, which has no type.
func isAuthFailure(err error) bool {
	var ne net.Error
	return !errors.As(err, &ne) && strings.Contains(err.Error(), "ssh: unable to authenticate")
}

// watch returns when c is lost: closed by either side, or silent for
// longer than the keepalives allow.
func (u *Upstream) watch(ctx context.Context, c *ssh.Client) error {
	closed := make(chan error, 1)
	go func() { closed <- c.Wait() }()
	tick := time.NewTicker(keepaliveInterval)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-closed:
			if err == nil {
				err = errors.New("closed by the server")
			}
			return err
		case <-tick.C:
			reply := make(chan error, 1)
			go func() {
				// sshd answers this unknown request with a failure, which
				// is all a keepalive needs: an answer.
				_, _, err := c.SendRequest("keepalive@openssh.com", true, nil)
				reply <- err
			}()
			select {
			case err := <-reply:
				if err != nil {
					return err
				}
			case err := <-closed:
				return err
			case <-time.After(keepaliveTimeout):
				return fmt.Errorf("no answer to keepalives for %s", keepaliveTimeout)
			case <-ctx.Done():
				return ctx.Err()
			}
		}
	}
}

// openChannel opens a session channel running ChannelCommand and returns
// it as a net.Conn for the HTTP transport.
func (u *Upstream) openChannel(ctx context.Context) (net.Conn, error) {
	c := u.current()
	if c == nil {
		return nil, ErrDown
	}
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	type result struct {
		conn net.Conn
		err  error
	}
	done := make(chan result, 1)
	go func() {
		conn, err := startChannel(c)
		done <- result{conn, err}
	}()
	select {
	case r := <-done:
		return r.conn, r.err
	case <-ctx.Done():
		u.drop(c, "no channel within "+connectTimeout.String())
		go func() {
			if r := <-done; r.conn != nil {
				r.conn.Close()
			}
		}()
		return nil, fmt.Errorf("no channel to the cache within %s: %w", connectTimeout, ctx.Err())
	}
}

func startChannel(c *ssh.Client) (net.Conn, error) {
	s, err := c.NewSession()
	if err != nil {
		return nil, err
	}
	in, err := s.StdinPipe()
	if err != nil {
		s.Close()
		return nil, err
	}
	out, err := s.StdoutPipe()
	if err != nil {
		s.Close()
		return nil, err
	}
	// Stderr is left nil: the session discards it, so that the server's
	// messages never stall the channel's window.
	if err := s.Start(ChannelCommand); err != nil {
		s.Close()
		return nil, fmt.Errorf("the cache refused %s (is nixcache on the server older than this one?): %w", ChannelCommand, err)
	}
	return &channelConn{session: s, in: in, out: out}, nil
}

// channelConn is a session channel as a net.Conn. Its deadlines do
// nothing: http.Transport sets none, a stalled request is bounded by the
// request's context, and a stalled connection by the keepalives, which
// close every channel on it.
type channelConn struct {
	session *ssh.Session
	in      io.WriteCloser
	out     io.Reader
}

func (c *channelConn) Read(p []byte) (int, error)       { return c.out.Read(p) }
func (c *channelConn) Write(p []byte) (int, error)      { return c.in.Write(p) }
func (c *channelConn) Close() error                     { return c.session.Close() }
func (c *channelConn) LocalAddr() net.Addr              { return channelAddr{} }
func (c *channelConn) RemoteAddr() net.Addr             { return channelAddr{} }
func (c *channelConn) SetDeadline(time.Time) error      { return nil }
func (c *channelConn) SetReadDeadline(time.Time) error  { return nil }
func (c *channelConn) SetWriteDeadline(time.Time) error { return nil }

type channelAddr struct{}

func (channelAddr) Network() string { return "ssh" }
func (channelAddr) String() string  { return ChannelCommand }
