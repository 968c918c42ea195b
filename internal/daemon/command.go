package daemon

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os/exec"
	"strings"
	"sync"
	"syscall"

	"github.com/nix-community/go-nix/pkg/wire"
)

// commandStream is a command's standard input and output as one stream, as
// Nix uses `ssh HOST nix-daemon --stdio` for an ssh-ng:// store.
type commandStream struct {
	io.Reader
	io.WriteCloser
	cmd    *exec.Cmd
	stderr *lockedBuffer
	once   sync.Once
}

func (s *commandStream) Close() error {
	s.once.Do(func() {
		s.WriteCloser.Close()
		syscall.Kill(-s.cmd.Process.Pid, syscall.SIGTERM)
		s.cmd.Wait()
	})
	return nil
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.b.Len() < 64<<10 {
		l.b.Write(p)
	}
	return len(p), nil
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// CommandError is a failed handshake over a command, with what the command
// said on its standard error (ssh's reason: "Permission denied", "Host key
// verification failed", "Connection refused"...).
type CommandError struct {
	Command string
	Stderr  string
	Err     error
}

func (e *CommandError) Error() string {
	msg := fmt.Sprintf("%s: %v", e.Command, e.Err)
	if s := strings.TrimSpace(e.Stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

func (e *CommandError) Unwrap() error { return e.Err }

func startCommand(argv []string, env []string) (*commandStream, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = env
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	s := &commandStream{cmd: cmd, stderr: &lockedBuffer{}}
	cmd.Stderr = s.stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	s.Reader, s.WriteCloser = out, in
	return s, nil
}

// DialCommand runs argv (with environment env, nil for the caller's) and
// speaks the worker protocol over its standard input and output.
func DialCommand(ctx context.Context, argv, env []string) (*Conn, error) {
	s, err := startCommand(argv, env)
	if err != nil {
		return nil, err
	}
	c, err := Handshake(ctx, s)
	if err != nil {
		s.Close()
		return nil, &CommandError{strings.Join(argv, " "), s.stderr.String(), err}
	}
	return c, nil
}

// The serve protocol of `nix-store --serve`, which ssh:// stores speak.
const (
	serveMagic1 = 0x390c9deb
	serveMagic2 = 0x5452eecb
	// ServeClientVersion is what Nix 2.8 to 2.18 send; servers answer
	// with their own version and both use the lower.
	serveClientVersion = 2<<8 | 6
)

// ServeHandshake runs argv, greets `nix-store --serve` at the other end and
// returns the version it announces. The command is stopped afterwards.
func ServeHandshake(ctx context.Context, argv, env []string) (Version, error) {
	s, err := startCommand(argv, env)
	if err != nil {
		return 0, err
	}
	defer s.Close()
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	fail := func(err error) (Version, error) {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return 0, &CommandError{strings.Join(argv, " "), s.stderr.String(), err}
	}
	w := bufio.NewWriter(s)
	if err := wire.WriteUint64(w, serveMagic1); err != nil {
		return fail(err)
	}
	if err := wire.WriteUint64(w, serveClientVersion); err != nil {
		return fail(err)
	}
	if err := w.Flush(); err != nil {
		return fail(err)
	}
	v, err := readServeGreeting(s)
	if err != nil {
		return fail(err)
	}
	return v, nil
}

// readServeGreeting reads `nix-store --serve`'s answer to the client's
// greeting: its magic number and its protocol version, whose major part Nix
// requires to be 2 as well.
func readServeGreeting(r io.Reader) (Version, error) {
	magic, err := wire.ReadUint64(r)
	if err != nil {
		return 0, fmt.Errorf("reading the greeting: %w", err)
	}
	if magic != serveMagic2 {
		return 0, &ProtocolError{"the other end did not answer as nix-store --serve (wrong magic number)"}
	}
	n, err := wire.ReadUint64(r)
	if err != nil {
		return 0, fmt.Errorf("reading the protocol version: %w", err)
	}
	if n>>8 != serveClientVersion>>8 {
		return 0, &ProtocolError{fmt.Sprintf("nix-store --serve announced protocol version %#x; Nix's ssh:// stores need 2.x", n)}
	}
	return Version(n), nil
}
