//go:build harness

package e2e

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nixcache/nixcache/tests/harness"
)

// The clients registry's story: the admin registers two machines with
// `nixcache clients add`, installs what `nixcache clients authorized-keys`
// renders, and both substitute; `nixcache clients remove` and a fresh
// render revoke one and leave the other. The sshd here has no Match block
// for the cache account (no ForceCommand, PermitTTY or forwarding settings),
// so everything that confines the clients comes from the rendered file: on
// a server set up by hand it is the only line of defence.
func TestRegistryGrantsAndRevokes(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto harness.Protocol) {
		c := newCache(t, proto)
		sshd := startSSHDWithoutMatchBlock(t, c.server)
		registry := filepath.Join(t.TempDir(), "clients.toml")
		closure := build(t, 3)
		sign(t, c.secretKey, "--recursive", closure.Top)

		a := newClient(t, sshd.server, c.publicKey)
		b := newClient(t, sshd.server, c.publicKey)
		clients(t, registry, "add", "--key", a.PublicKey, "--comment", "machine A", "client-a")
		clients(t, registry, "add", "--key", b.PublicKey, "client-b")
		authorize(t, c.server, registry, proto)

		// Both substitute through the command the file forces.
		for name, cl := range map[string]*harness.Client{"A": a, "B": b} {
			if r := cl.Substitute(closure.Top); r.Err != nil {
				t.Fatalf("client %s: substitution failed: %v\nsshd log:\n%s", name, r.Err, sshd.log())
			}
		}
		serve := "nix-daemon --stdio"
		if proto == harness.SSH {
			serve = "nix-store --serve"
		}
		if want := "forced-command (key-option) '" + serve + "'"; !strings.Contains(sshd.log(), want) {
			t.Fatalf("sshd did not run %q from the key's options; log:\n%s", want, sshd.log())
		}

		// Whatever the client asks to run, the serve command runs instead;
		// sshd reports (to ssh -v) that the key allows nothing but that.
		marker := "shell-" + harness.Nonce()
		r := a.SSH("-v", "echo", marker)
		if strings.Contains(r.Stdout, marker) {
			t.Fatalf("a command ran on the cache account: %q", r.Stdout)
		}
		if !regexp.MustCompile(`(?m)Remote: \S+:\d+: key options: command\r?$`).MatchString(r.Stderr) {
			t.Fatalf("sshd did not report the key as restricted to its command; ssh -v said:\n%s", r.Stderr)
		}
		// No terminal and no forwarding of any kind: here the rendered
		// file alone says so; on the sshd with nixpkgs' Match block both do.
		confined(t, a, sshd.server.Port)
		m := newClient(t, c.server, c.publicKey)
		clients(t, registry, "add", "--key", m.PublicKey, "client-m")
		authorize(t, c.server, registry, proto)
		confined(t, m, c.server.Port)

		// The admin removes A and renders the file again: A is refused at
		// once, B still substitutes.
		clients(t, registry, "remove", "client-a")
		authorize(t, c.server, registry, proto)
		if r := a.SSH("true"); r.Err == nil || !strings.Contains(r.Stderr, "Permission denied") {
			t.Fatalf("ssh with a removed client's key: err=%v stderr=%q, want permission denied", r.Err, r.Stderr)
		}
		later := build(t, 2)
		sign(t, c.secretKey, "--recursive", later.Top)
		refused(t, a, "a removed client", later)
		if r := b.Substitute(later.Top); r.Err != nil {
			t.Fatalf("client B after A's removal: %v\nsshd log:\n%s", r.Err, sshd.log())
		}
	})
}

// clients runs `nixcache clients --registry FILE ARGS...`.
func clients(t *testing.T, registry string, args ...string) string {
	t.Helper()
	r := harness.Run(env.Environ(), nixcache, append([]string{"clients", "--registry", registry}, args...)...)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	return r.Stdout
}

// authorize installs the registry's authorized_keys on the server.
func authorize(t *testing.T, server *harness.Server, registry string, proto harness.Protocol) {
	t.Helper()
	text := clients(t, registry, "authorized-keys", "--protocol", string(proto))
	if err := server.Authorize(strings.Split(strings.TrimSuffix(text, "\n"), "\n")...); err != nil {
		t.Fatal(err)
	}
}

func newClient(t *testing.T, server *harness.Server, trusted ...string) *harness.Client {
	t.Helper()
	cl, err := env.NewClient(t.TempDir(), server)
	if err != nil {
		t.Fatal(err)
	}
	if err := cl.UseCache(trusted...); err != nil {
		t.Fatal(err)
	}
	return cl
}

// bareSSHD is a second sshd for a harness server's account, host key and
// authorized_keys, configured without the Match block that confines the
// cache account on NixOS.
type bareSSHD struct {
	server  *harness.Server // for clients: its port and host key
	logPath string
}

func (s *bareSSHD) log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// startSSHDWithoutMatchBlock starts sshd with the harness server's
// configuration up to its Match block, on a port of its own, in a mount
// namespace with the server's copies of passwd, group and shadow (which
// hold the cache account). It stops when the test ends.
func startSSHDWithoutMatchBlock(t *testing.T, s *harness.Server) *bareSSHD {
	t.Helper()
	cfg, err := os.ReadFile(filepath.Join(s.Dir, "sshd_config"))
	if err != nil {
		t.Fatal(err)
	}
	text, _, found := strings.Cut(string(cfg), "\nMatch ")
	if !found || strings.Contains(text, "ForceCommand") {
		t.Fatalf("the harness's sshd_config changed shape:\n%s", cfg)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	text = regexp.MustCompile(`(?m)^Port \d+$`).ReplaceAllString(text, fmt.Sprintf("Port %d", port)) + "\n"
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	sshdPath, err := exec.LookPath("sshd")
	if err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, "sshd.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(env.OwnRoot(),
		"/bin/sh", "-c", `mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && mount --bind "$3" /etc/shadow && exec "$4" -D -e -f "$5"`,
		"sh", filepath.Join(s.Dir, "passwd"), filepath.Join(s.Dir, "group"), filepath.Join(s.Dir, "shadow"), sshdPath, cfgPath)
	cmd.Env = env.Environ()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Its own process group, stopped with everything it forked; the kernel
	// stops it should the test binary die first.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
	})
	bare := &bareSSHD{
		server:  &harness.Server{Protocol: s.Protocol, Dir: dir, Port: port, HostKey: s.HostKey},
		logPath: logPath,
	}
	// Wait for the banner.
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case <-exited:
			t.Fatalf("sshd exited at start:\n%s", bare.log())
		default:
		}
		if conn, err := net.DialTimeout("tcp", bare.server.Addr(), time.Second); err == nil {
			conn.SetDeadline(time.Now().Add(5 * time.Second))
			banner, _ := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if strings.HasPrefix(banner, "SSH-2.0-") {
				return bare
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd did not answer within 20s:\n%s", bare.log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// confined checks, against the real sshd on port, that a client's key gets
// no terminal and no forwarding: remote (-R), local (-L), stdio (-W) or
// agent (-A). Each is asked for as ssh asks, and the refusal is seen.
func confined(t *testing.T, cl *harness.Client, port int) {
	t.Helper()
	marker := "shell-" + harness.Nonce()
	r := cl.SSH("-tt", "sh", "-c", "'echo "+marker+"'")
	if strings.Contains(r.Stdout, marker) {
		t.Errorf("a shell ran on the cache account with a terminal: %q", r.Stdout)
	}
	if !strings.Contains(r.Stderr, "PTY allocation request failed") {
		t.Errorf("sshd granted a terminal; ssh said %q", r.Stderr)
	}

	r = cl.SSH("-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:9", "true")
	if r.Err == nil || !strings.Contains(r.Stderr, "remote port forwarding failed") {
		t.Errorf("sshd allowed a remote port forward (-R): err=%v, ssh said %q", r.Err, r.Stderr)
	}

	target, reached := forwardTarget(t)
	r = cl.SSH("-W", target)
	if r.Err == nil || !strings.Contains(r.Stderr, "administratively prohibited") || reached() {
		t.Errorf("sshd allowed stdio forwarding (-W): err=%v, target reached=%v, ssh said %q", r.Err, reached(), r.Stderr)
	}

	local := fmt.Sprintf("127.0.0.1:%d", unusedPort(t))
	fwd := sshInBackground(t, cl, nil, "-N", "-L", local+":"+target)
	conn := dialWithin(t, "tcp", local)
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	n, _ := conn.Read(make([]byte, 1))
	conn.Close()
	fwd.stop()
	if n > 0 || reached() || !strings.Contains(fwd.stderr.String(), "administratively prohibited") {
		t.Errorf("sshd allowed a local port forward (-L): target reached=%v, ssh said %q", reached(), fwd.stderr.String())
	}

	// Agent forwarding: ssh asks for it when it has an agent, and sshd,
	// had it agreed, would put SSH_AUTH_SOCK in the session's environment.
	agentSock := filepath.Join(t.TempDir(), "agent")
	agent := exec.Command("ssh-agent", "-D", "-a", agentSock)
	agent.Stdout, agent.Stderr = io.Discard, io.Discard
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { agent.Process.Kill(); agent.Wait() }()
	dialWithin(t, "unix", agentSock).Close()
	session := sshInBackground(t, cl, []string{"SSH_AUTH_SOCK=" + agentSock}, "-v", "-A", "true")
	defer session.stop()
	env := sessionEnv(t, port)
	if !strings.Contains(session.stderr.String(), "Requesting authentication agent forwarding") {
		t.Fatalf("ssh did not ask for agent forwarding; it said:\n%s", session.stderr.String())
	}
	for _, v := range env {
		if strings.HasPrefix(v, "SSH_AUTH_SOCK=") {
			t.Errorf("sshd forwarded the agent into the cache account's session: %s", v)
		}
	}
}

// forwardTarget accepts connections on a loopback port; reached says whether any
// came.
func forwardTarget(t *testing.T) (addr string, reached func() bool) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	var got atomic.Bool
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			got.Store(true)
			c.Close()
		}
	}()
	return l.Addr().String(), func() bool { time.Sleep(200 * time.Millisecond); return got.Load() }
}

func unusedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func dialWithin(t *testing.T, network, addr string) net.Conn {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := net.DialTimeout(network, addr, time.Second)
		if err == nil {
			return conn
		}
		if time.Now().After(deadline) {
			t.Fatalf("nothing listens on %s after 10s: %v", addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sshProcess is a client's ssh left running, its standard input held open
// so that the session lasts until stop.
type sshProcess struct {
	cmd    *exec.Cmd
	stdin  io.Closer
	stderr *lockedBuffer
	once   sync.Once
}

func sshInBackground(t *testing.T, cl *harness.Client, env []string, args ...string) *sshProcess {
	t.Helper()
	cmd := exec.Command("ssh", append([]string{"-F", cl.SSHConfig(), harness.HostAlias}, args...)...)
	cmd.Env = append(cl.Environ(), env...)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	p := &sshProcess{cmd: cmd, stdin: stdin, stderr: &lockedBuffer{}}
	cmd.Stderr = p.stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.stop)
	return p
}

func (p *sshProcess) stop() {
	p.once.Do(func() {
		p.stdin.Close()
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		p.cmd.Wait()
	})
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *lockedBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *lockedBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// sessionEnv is the environment of the process sshd runs for the one
// session open on port, found by its SSH_CONNECTION.
func sessionEnv(t *testing.T, port int) []string {
	t.Helper()
	suffix := fmt.Sprintf(" %d", port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		dirs, _ := filepath.Glob("/proc/[0-9]*/environ")
		for _, file := range dirs {
			data, err := os.ReadFile(file)
			if err != nil {
				continue
			}
			env := strings.Split(string(data), "\x00")
			for _, v := range env {
				if strings.HasPrefix(v, "SSH_CONNECTION=") && strings.HasSuffix(v, suffix) {
					return env
				}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no session process for sshd on port %d after 10s", port)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
