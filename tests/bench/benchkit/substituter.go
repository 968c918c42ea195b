package benchkit

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/nixcache/nixcache/tests/harness"
)

// Substituter is a client's `nixcache client substituter`, started by
// StartSubstituter.
type Substituter struct {
	// URL is where Nix reaches it: http://127.0.0.1:PORT.
	URL     string
	logPath string
	cmd     *exec.Cmd
	exited  chan error
}

// SubstituterOptions say how a client's substituter reaches the cache.
type SubstituterOptions struct {
	// Dir is the client's directory: the pinned host key, the spool and
	// the substituter's log go there.
	Dir string
	// Cache is the --cache URL, ssh://USER@127.0.0.1:PORT.
	Cache string
	// Port is the one in Cache, for the pinned host key's line.
	Port int
	// Identity is the client's SSH private key; HostKey the server's
	// public host key, "ssh-ed25519 AAAA...".
	Identity, HostKey string
	// Args are more flags for the substituter.
	Args []string
	// Timeout bounds the wait for its first answer.
	Timeout time.Duration
}

// StartSubstituter starts `nixcache client substituter` on a free loopback
// port, with the server's host key pinned for 127.0.0.1:Port, and waits
// until it answers Nix (/nix-cache-info), as a substituter service would be
// running already.
func StartSubstituter(env *harness.Env, nixcache string, o SubstituterOptions) (*Substituter, error) {
	knownHosts := filepath.Join(o.Dir, "substituter-known_hosts")
	if err := os.WriteFile(knownHosts, fmt.Appendf(nil, "[127.0.0.1]:%d %s\n", o.Port, o.HostKey), 0o644); err != nil {
		return nil, err
	}
	spool := filepath.Join(o.Dir, "spool")
	if err := os.Mkdir(spool, 0o700); err != nil {
		return nil, err
	}
	listen, err := FreeAddr()
	if err != nil {
		return nil, err
	}
	sub := &Substituter{URL: "http://" + listen, logPath: filepath.Join(o.Dir, "substituter.log"), exited: make(chan error, 1)}
	logFile, err := os.Create(sub.logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	args := append([]string{"client", "substituter",
		"--cache", o.Cache, "--listen", listen,
		"--identity-file", o.Identity, "--known-hosts-file", knownHosts, "--spool-dir", spool}, o.Args...)
	sub.cmd = exec.Command(nixcache, args...)
	sub.cmd.Env = env.Environ()
	sub.cmd.Stdout, sub.cmd.Stderr = logFile, logFile
	sub.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sub.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { sub.exited <- sub.cmd.Wait() }()
	hc := &http.Client{Timeout: 2 * time.Second}
	for deadline := time.Now().Add(o.Timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-sub.exited:
			sub.exited <- err
			return nil, fmt.Errorf("the substituter exited before serving: %v\n%s", err, sub.Log())
		default:
		}
		resp, err := hc.Get(sub.URL + "/nix-cache-info")
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return sub, nil
		}
	}
	sub.Stop()
	return nil, fmt.Errorf("the substituter did not answer /nix-cache-info within %v:\n%s", o.Timeout, sub.Log())
}

// Stop ends the substituter by its PID: SIGTERM, then SIGKILL if it has
// not exited within 10 s.
func (s *Substituter) Stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		fmt.Fprintf(os.Stderr, "bench: the substituter (pid %d) ignored SIGTERM for 10s; killing it\n", s.cmd.Process.Pid)
		s.cmd.Process.Kill()
		<-s.exited
	}
}

// Log is what the substituter logged so far.
func (s *Substituter) Log() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err.Error()
	}
	return string(b)
}

// FreeAddr is a loopback address with a port nothing listens on now.
func FreeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
