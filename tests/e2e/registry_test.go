//go:build harness

package e2e

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
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
		// No terminal...
		r = a.SSH("-tt", "sh", "-c", "'echo "+marker+"'")
		if strings.Contains(r.Stdout, marker) {
			t.Fatalf("a shell ran on the cache account with a terminal: %q", r.Stdout)
		}
		if !strings.Contains(r.Stderr, "PTY allocation request failed") {
			t.Errorf("sshd granted a terminal; ssh said %q", r.Stderr)
		}
		// ...and no forwarding.
		r = a.SSH("-o", "ExitOnForwardFailure=yes", "-R", "127.0.0.1:0:127.0.0.1:9", "true")
		if r.Err == nil || !strings.Contains(r.Stderr, "remote port forwarding failed") {
			t.Errorf("sshd allowed a remote port forward: err=%v, ssh said %q", r.Err, r.Stderr)
		}

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
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--",
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
