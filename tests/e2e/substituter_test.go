//go:build harness

package e2e

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixcache/nixcache/tests/bench/substitute/linkproxy"
	"github.com/nixcache/nixcache/tests/harness"
)

// The substituter's story: a machine joins a cache whose account runs
// `nixcache serve`, runs `nixcache client substituter`, and its daemon
// substitutes from http://127.0.0.1:PORT as from any HTTP binary cache,
// checking the cache's signatures. When the cache goes down, builds go on
// at once; when the server presents another host key, nothing connects.
func TestSubstituterSubstitutesAClosure(t *testing.T) {
	c := newCache(t, harness.Nixcache)
	const n = 50
	closure := build(t, n)
	sign(t, c.secretKey, "--recursive", closure.Top)
	m := newMachine(t, debianNixConf, true)
	joinForSubstituter(t, c, m)
	sub := startSubstituter(t, c, m)
	useSubstituter(t, m, sub.url, c.publicKey)

	start := time.Now()
	if r := m.Realise(closure.Top); r.Err != nil {
		t.Fatalf("substitution through the substituter failed: %v\nsubstituter:\n%s\nsshd:\n%s", r.Err, sub.log(), c.server.Log())
	}
	t.Logf("substituted %d paths in %s", n, time.Since(start))
	for _, p := range closure.Paths {
		if !m.Has(p) {
			t.Errorf("%s is missing from the machine's store", p)
		}
	}
	r := harness.Run(m.Environ(), "nix", "store", "verify", "--sigs-needed", "1", "--recursive", closure.Top)
	if r.Err != nil {
		t.Fatalf("the machine's Nix does not verify the closure: %v", r.Err)
	}
	// One SSH connection carried it all.
	if logins := strings.Count(c.server.Log(), "Accepted publickey"); logins != 1 {
		t.Errorf("%d SSH logins for one substitution, want 1", logins)
	}

	t.Run("cache down: builds go on at once", func(t *testing.T) {
		// A machine that builds (its daemon serves /nix/store) and knows
		// the substituter from before the cache went down.
		builder := newMachine(t, debianNixConf, false)
		useSubstituter(t, builder, sub.url, c.publicKey)
		known := build(t, 1)
		if r := harness.Run(builder.Environ(), "nix", "path-info", "--store", sub.url, known.Top); r.Err != nil {
			t.Fatal(r.Err)
		}
		c.server.Close()
		sub.waitLog(t, "lost the connection")
		const paths = 5
		start := time.Now()
		r := harness.Run(builder.Environ(), "nix-build", "--no-out-link", filepath.Join(env.Dir, "closure.nix"),
			"--argstr", "nonce", harness.Nonce(), "--arg", "n", strconv.Itoa(paths))
		took := time.Since(start)
		if r.Err != nil {
			t.Fatalf("building with the cache down: %v\nsubstituter:\n%s", r.Err, sub.log())
		}
		t.Logf("built %d paths with the cache down in %s", paths, took)
		if took > 10*time.Second {
			t.Errorf("building %d paths with the cache down took %s", paths, took)
		}
	})
}

// Through a link of 40 ms round trip and 200 Mbit/s, the closure a
// machine lacks arrives over the substituter in a fraction of the time
// Nix's own ssh:// store takes, which pays two round trips per path.
func TestSubstituterOverASlowLink(t *testing.T) {
	c := newCache(t, harness.Nixcache)
	const n = 100
	closure := build(t, n)
	sign(t, c.secretKey, "--recursive", closure.Top)
	link, err := linkproxy.Start(c.server.Addr(), linkproxy.Link{RTT: 40 * time.Millisecond, Bandwidth: 200e6 / 8})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { link.Close() })
	url := fmt.Sprintf("ssh://%s@127.0.0.1:%d", harness.CacheUser, link.Port())

	substitute := func(t *testing.T, m *harness.Machine) time.Duration {
		t.Helper()
		start := time.Now()
		if r := m.Realise(closure.Top); r.Err != nil {
			t.Fatalf("substitution failed: %v\nsshd:\n%s", r.Err, c.server.Log())
		}
		took := time.Since(start)
		for _, p := range closure.Paths {
			if !m.Has(p) {
				t.Fatalf("%s is missing", p)
			}
		}
		return took
	}
	// Today: ssh://, as join writes it.
	viaSSH := newMachine(t, debianNixConf, true)
	joinURLForSubstituter(t, c, viaSSH, url)
	if err := viaSSH.Restart(); err != nil {
		t.Fatal(err)
	}
	sshTook := substitute(t, viaSSH)

	var subTook [2]time.Duration
	for i, conf := range []string{"", "max-jobs = 8\n"} {
		m := newMachine(t, debianNixConf+conf, true)
		joinURLForSubstituter(t, c, m, url)
		sub := startSubstituterAt(t, url, m)
		useSubstituter(t, m, sub.url, c.publicKey, conf)
		subTook[i] = substitute(t, m)
	}
	// Times are for the benchmark (docs/benchmarks.md), not a test: logged.
	t.Logf("%d paths (a chain) at 40 ms RTT: ssh:// %s; substituter %s (Nix's defaults), %s (max-jobs = 8)", n, sshTook, subTook[0], subTook[1])
}

func TestSubstituterRefusesAnotherHostKey(t *testing.T) {
	c := newCache(t, harness.Nixcache)
	m := newMachine(t, debianNixConf, true)
	joinForSubstituter(t, c, m)
	if err := c.server.ReplaceHostKey(); err != nil {
		t.Fatal(err)
	}
	r := harness.Run(m.Environ(), nixcache, "client", "substituter", "--cache", cacheURL(c),
		"--listen", "127.0.0.1:"+strconv.Itoa(freePort(t)), "--ssh-dir", m.SSHDir)
	if r.Err == nil {
		t.Fatal("the substituter ran against a server with another host key")
	}
	if !strings.Contains(r.Stderr, "is not the one pinned") || !strings.Contains(r.Stderr, "hint: nothing was sent to the server") {
		t.Errorf("stderr does not say why:\n%s", r.Stderr)
	}
	if strings.Contains(c.server.Log(), "Accepted publickey") {
		t.Errorf("the substituter logged in to a server with another host key:\n%s", c.server.Log())
	}
}

func cacheURL(c *cache) string {
	return fmt.Sprintf("ssh://%s@127.0.0.1:%d", harness.CacheUser, c.server.Port)
}

// joinForSubstituter joins m to c as a user would, and has the admin
// register the key join made in the registry `nixcache serve` reads.
func joinForSubstituter(t *testing.T, c *cache, m *harness.Machine) {
	t.Helper()
	joinURLForSubstituter(t, c, m, cacheURL(c))
}

// joinURLForSubstituter is joinForSubstituter with the cache reached at
// url (through a proxy).
func joinURLForSubstituter(t *testing.T, c *cache, m *harness.Machine, url string) {
	t.Helper()
	r := onMachine(m, "client", "join", "--cache", url, "--public-key", c.publicKey,
		"--host-key-fingerprint", hostKeyFingerprint(t, c.server.HostKey), "--no-restart")
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	c.registryFile = c.server.Registry()
	line := strings.TrimSpace(r.Stdout)
	add := harness.Run(env.Environ("PATH="+filepath.Dir(nixcache)+":"+os.Getenv("PATH")), "sh", "-c", line+` --registry "$1"`, "sh", c.registryFile)
	if add.Err != nil {
		t.Fatal(add.Err)
	}
	keys := clients(t, c.registryFile, "authorized-keys")
	if err := c.server.Authorize(strings.Split(strings.TrimSuffix(keys, "\n"), "\n")...); err != nil {
		t.Fatal(err)
	}
}

// useSubstituter makes url m's only substituter, with fallback and the
// extra lines, and restarts m's daemon.
func useSubstituter(t *testing.T, m *harness.Machine, url, trusted string, extra ...string) {
	t.Helper()
	conf := debianNixConf + strings.Join(extra, "") + fmt.Sprintf("substituters = %s\ntrusted-public-keys = %s\nfallback = true\n", url, trusted)
	if err := os.WriteFile(filepath.Join(m.ConfDir, "nix.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
}

type substituterProcess struct {
	url     string
	logPath string
}

func (s *substituterProcess) log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// waitLog waits for the substituter to log a line containing what.
func (s *substituterProcess) waitLog(t *testing.T, what string) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if strings.Contains(s.log(), what) {
			return
		}
	}
	t.Fatalf("the substituter did not log %q:\n%s", what, s.log())
}

// startSubstituter runs `nixcache client substituter` for m until the test
// ends, and waits until it serves.
func startSubstituter(t *testing.T, c *cache, m *harness.Machine) *substituterProcess {
	t.Helper()
	return startSubstituterAt(t, cacheURL(c), m)
}

// startSubstituterAt is startSubstituter for the cache at url.
func startSubstituterAt(t *testing.T, url string, m *harness.Machine) *substituterProcess {
	t.Helper()
	addr := "127.0.0.1:" + strconv.Itoa(freePort(t))
	s := &substituterProcess{url: "http://" + addr, logPath: filepath.Join(t.TempDir(), "substituter.log")}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	cmd := exec.Command(nixcache, "client", "substituter", "--cache", url, "--listen", addr,
		"--ssh-dir", m.SSHDir, "--spool-dir", t.TempDir())
	cmd.Env = m.Environ()
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	s.waitLog(t, "serving")
	if !strings.Contains(s.log(), "connected to the cache") {
		t.Fatalf("the substituter serves without a connection:\n%s", s.log())
	}
	return s
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Under systemd socket activation the substituter serves on the socket it
// is given: systemd holds the port from boot on, so no local user can take
// it while the substituter is restarting and answer Nix in its place.
func TestSubstituterTakesSystemdsSocket(t *testing.T) {
	c := newCache(t, harness.Nixcache)
	m := newMachine(t, debianNixConf, true)
	joinForSubstituter(t, c, m)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	logPath := filepath.Join(t.TempDir(), "substituter.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	// As systemd starts a socket-activated service: the socket is fd 3 and
	// LISTEN_PID names the service's own PID.
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"`, "sh",
		nixcache, "client", "substituter", "--cache", cacheURL(c), "--listen", l.Addr().String(), "--ssh-dir", m.SSHDir, "--spool-dir", t.TempDir())
	cmd.Env = m.Environ()
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	s := &substituterProcess{url: "http://" + l.Addr().String(), logPath: logPath}
	s.waitLog(t, "serving")
	resp, err := http.Get(s.url + "/nix-cache-info")
	if err != nil {
		t.Fatalf("%v\n%s", err, s.log())
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("on systemd's socket: %s\n%s", resp.Status, s.log())
	}
}
