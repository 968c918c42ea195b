package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/nixcache/nixcache/tests/bench/substitute/linkproxy"
	"github.com/nixcache/nixcache/tests/harness"
)

// staticCache copies the closure from the server's store into a plain
// binary cache under work (uncompressed, as the SSH stores send it) and
// serves it with net/http's FileServer on loopback, behind a proxy of its
// own that plays the link. Clients reach the returned proxy; stop ends
// both.
func staticCache(env *harness.Env, work string, cl closure, link linkproxy.Link) (px *linkproxy.Proxy, stop func(), err error) {
	dir := filepath.Join(work, "binary-cache")
	start := time.Now()
	r := runLong(env.Environ(), 10*time.Minute, "nix", "--extra-experimental-features", "nix-command",
		"copy", "--to", "file://"+dir+"?compression=none", cl.Top)
	if r.Err != nil {
		return nil, nil, r.Err
	}
	fmt.Fprintf(os.Stderr, "static binary cache in %s ready in %.1fs\n", dir, time.Since(start).Seconds())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(dir)), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	if px, err = linkproxy.Start(ln.Addr().String(), link); err != nil {
		srv.Close()
		return nil, nil, err
	}
	return px, func() { px.Close(); srv.Close() }, nil
}

// register adds a client to the registry `nixcache serve` reads and
// installs the registry's authorized_keys, as the cache's admin would.
func register(env *harness.Env, nixcache string, s *harness.Server, name, publicKey string) error {
	if r := harness.Run(env.Environ(), nixcache, "clients", "add", "--registry", s.Registry(), "--key", publicKey, name); r.Err != nil {
		return r.Err
	}
	r := harness.Run(env.Environ(), nixcache, "clients", "authorized-keys", "--registry", s.Registry())
	if r.Err != nil {
		return r.Err
	}
	return s.Authorize(strings.Split(strings.TrimSuffix(r.Stdout, "\n"), "\n")...)
}

// substituterProcess is a client's `nixcache client substituter`.
type substituterProcess struct {
	url, logPath string
	cmd          *exec.Cmd
	exited       chan error
}

// startSubstituter starts `nixcache client substituter` for client,
// reaching the cache at 127.0.0.1:port (the proxy) with the client's key
// and the server's host key pinned for that address, on a free loopback
// port, and waits until it answers Nix.
func startSubstituter(env *harness.Env, nixcache string, client *harness.Client, s *harness.Server, port int, timeout time.Duration) (*substituterProcess, error) {
	knownHosts := filepath.Join(client.Dir, "substituter-known_hosts")
	if err := os.WriteFile(knownHosts, fmt.Appendf(nil, "[127.0.0.1]:%d %s\n", port, s.HostKey), 0o644); err != nil {
		return nil, err
	}
	spool := filepath.Join(client.Dir, "spool")
	if err := os.Mkdir(spool, 0o700); err != nil {
		return nil, err
	}
	listen, err := freeAddr()
	if err != nil {
		return nil, err
	}
	sub := &substituterProcess{url: "http://" + listen, logPath: filepath.Join(client.Dir, "substituter.log"), exited: make(chan error, 1)}
	logFile, err := os.Create(sub.logPath)
	if err != nil {
		return nil, err
	}
	defer logFile.Close()
	sub.cmd = exec.Command(nixcache, "client", "substituter",
		"--cache", fmt.Sprintf("ssh://%s@127.0.0.1:%d", harness.CacheUser, port), "--listen", listen,
		"--identity-file", client.Key, "--known-hosts-file", knownHosts, "--spool-dir", spool)
	sub.cmd.Env = env.Environ()
	sub.cmd.Stdout, sub.cmd.Stderr = logFile, logFile
	sub.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := sub.cmd.Start(); err != nil {
		return nil, err
	}
	go func() { sub.exited <- sub.cmd.Wait() }()
	hc := &http.Client{Timeout: 2 * time.Second}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		select {
		case err := <-sub.exited:
			sub.exited <- err
			return nil, fmt.Errorf("the substituter exited before serving: %v\n%s", err, sub.log())
		default:
		}
		resp, err := hc.Get(sub.url + "/nix-cache-info")
		if err != nil {
			continue
		}
		resp.Body.Close()
		if resp.StatusCode == http.StatusOK {
			return sub, nil
		}
	}
	sub.stop()
	return nil, fmt.Errorf("the substituter did not answer /nix-cache-info within %v:\n%s", timeout, sub.log())
}

// stop ends the substituter by its PID: SIGTERM, then SIGKILL if it has
// not exited within 10 s.
func (s *substituterProcess) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		fmt.Fprintf(os.Stderr, "substitute: the substituter (pid %d) ignored SIGTERM for 10s; killing it\n", s.cmd.Process.Pid)
		s.cmd.Process.Kill()
		<-s.exited
	}
}

func (s *substituterProcess) log() string {
	b, err := os.ReadFile(s.logPath)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return err.Error()
	}
	return string(b)
}

// freeAddr is a loopback address with a port nothing listens on now.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}
