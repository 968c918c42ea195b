package harness

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// Uploads configures a cache that takes uploads (docs/uploads.md): sshd
// forces `nixcache serve --publisher SOCKET --publish-mode MODE --roots
// DIR`, and `nixcache publisher` runs as root beside it, signing with the
// Env's cache key.
type Uploads struct {
	// PublishMode is serve's --publish-mode: "all" (the default) or
	// "published".
	PublishMode string
	// MaxNarSize is the publisher's --max-nar-size, "" for its default.
	MaxNarSize string
}

// Publisher is a running `nixcache publisher`.
type Publisher struct {
	// Socket is where it listens, in the server's directory.
	Socket string
	// Roots is its roots directory (and serve's --roots): private to the
	// server, so no other test's uploads are seen in it.
	Roots string
	// AuditLog is its --audit-log.
	AuditLog string

	logPath string
	args    []string
	server  *Server
	proc    *Process
}

// StartUploadServer starts a Nixcache server that takes uploads: the
// publisher (as root, --allow-user the cache account, the Env's cache key),
// then sshd. Clients are registered with AddClient.
func (e *Env) StartUploadServer(u Uploads) (*Server, error) {
	s, err := e.newServer(Nixcache)
	if err != nil {
		return nil, err
	}
	s.publishMode = u.PublishMode
	if s.publishMode == "" {
		s.publishMode = "all"
	}
	p := &Publisher{
		Socket:   filepath.Join(s.Dir, "publisher.sock"),
		Roots:    filepath.Join(s.Dir, "roots"),
		AuditLog: filepath.Join(s.Dir, "audit.log"),
		logPath:  filepath.Join(s.Dir, "publisher.log"),
		server:   s,
	}
	s.Publisher = p
	// serve, as the cache account, reads the roots for published mode.
	if err := os.Mkdir(p.Roots, 0o755); err != nil {
		return nil, err
	}
	nixcache, err := e.Nixcache()
	if err != nil {
		return nil, err
	}
	p.args = []string{nixcache, "publisher", "--listen", p.Socket, "--registry", s.Registry(),
		"--secret-key-file", e.CacheSecretKey, "--roots", p.Roots, "--allow-user", CacheUser, "--audit-log", p.AuditLog}
	if u.MaxNarSize != "" {
		p.args = append(p.args, "--max-nar-size", u.MaxNarSize)
	}
	if err := p.Start(); err != nil {
		return nil, err
	}
	if err := s.start(e, s.hostKeyFile()); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Start starts the publisher (again, after Stop) and waits until its socket
// accepts connections.
func (p *Publisher) Start() error {
	log, err := os.OpenFile(p.logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	defer log.Close()
	// In the account's namespace: --allow-user names the cache account,
	// which exists only there.
	cmd, err := p.server.withAccount(p.args[0], p.args[1:]...)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if p.proc, err = StartProcess(cmd); err != nil {
		return err
	}
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if exited, werr := p.proc.Exited(); exited {
			return fmt.Errorf("the publisher exited at start (%v):\n%s", werr, p.Log())
		}
		// Root may connect (SO_PEERCRED), and says nothing.
		if c, err := net.Dial("unix", p.Socket); err == nil {
			return c.Close()
		}
	}
	p.Stop()
	return fmt.Errorf("the publisher did not listen on %s within 20s:\n%s", p.Socket, p.Log())
}

// Stop stops the publisher, as a crash or a restart would.
func (p *Publisher) Stop() { p.proc.Stop() }

// Log is what the publisher logged, for failure messages.
func (p *Publisher) Log() string {
	b, _ := os.ReadFile(p.logPath)
	return string(b)
}

// Audit is the audit log's lines.
func (p *Publisher) Audit() []string {
	b, _ := os.ReadFile(p.AuditLog)
	return strings.Split(strings.TrimSuffix(string(b), "\n"), "\n")
}

// SetPublishMode restarts sshd, on the same port with the same host key,
// forcing serve with another --publish-mode.
func (s *Server) SetPublishMode(mode string) error {
	if s.Publisher == nil {
		return errors.New("the server takes no uploads: start it with StartUploadServer")
	}
	s.sshd.Stop()
	s.publishMode = mode
	return s.start(s.env, s.hostKeyFile())
}

// Role is a client's role in the registry (docs/uploads.md).
type Role string

const (
	Pull Role = "pull"
	Push Role = "push"
)

// AddClient registers a client's key with role in the server's registry
// (`nixcache clients add --role`) and installs the authorized_keys the
// registry renders.
func (s *Server) AddClient(name string, role Role, publicKey string) error {
	nixcache, err := s.env.Nixcache()
	if err != nil {
		return err
	}
	if r := Run(s.env.Environ(), nixcache, "clients", "--registry", s.Registry(), "add", "--key", publicKey, "--role", string(role), name); r.Err != nil {
		return r.Err
	}
	return s.AuthorizeRegistry()
}

// AuthorizeRegistry installs what `nixcache clients authorized-keys
// --protocol nixcache` renders from the server's registry.
func (s *Server) AuthorizeRegistry() error {
	nixcache, err := s.env.Nixcache()
	if err != nil {
		return err
	}
	r := Run(s.env.Environ(), nixcache, "clients", "--registry", s.Registry(), "authorized-keys", "--protocol", "nixcache", "--serve-command", nixcache)
	if r.Err != nil {
		return r.Err
	}
	return s.Authorize(strings.Split(strings.TrimSuffix(r.Stdout, "\n"), "\n")...)
}

// stopPublisher stops the publisher of a server that takes uploads.
func (s *Server) stopPublisher() {
	if s.Publisher != nil {
		s.Publisher.Stop()
	}
}
