//go:build harness

package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/nixcache/nixcache/tests/harness"
)

// The channel's story as a user lives it: join a cache whose account runs
// `nixcache serve` with nixcache://, the admin registers the key join
// printed, the substituter runs exactly as join said, the daemon restarts
// and substitutes a signed closure through it, and doctor says all is
// well; with the substituter stopped, doctor says what to start.
func TestChannelJoinThenSubstitute(t *testing.T) {
	c := newCache(t, harness.Nixcache)
	cl := build(t, 3)
	sign(t, c.secretKey, "--recursive", cl.Top)
	m := newMachine(t, debianNixConf, true)
	port := freePort(t)
	url := fmt.Sprintf("nixcache://%s@127.0.0.1:%d", harness.CacheUser, c.server.Port)
	args := []string{"client", "join", "--cache", url, "--public-key", c.publicKey,
		"--host-key-fingerprint", hostKeyFingerprint(t, c.server.HostKey), "--substituter-port", strconv.Itoa(port)}
	r := onMachine(m, args...)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	conf := readFile(t, filepath.Join(m.ConfDir, "nix.conf"))
	if !strings.HasPrefix(conf, debianNixConf) || !strings.Contains(conf, fmt.Sprintf("substituters = http://127.0.0.1:%d\n", port)) ||
		!strings.Contains(conf, c.publicKey) {
		t.Errorf("nix.conf after join:\n%s", conf)
	}
	// ssh by hand reaches the cache account with the daemon's settings.
	if managed := readFile(t, filepath.Join(m.SSHDir, "nixcache_config")); !strings.Contains(managed, fmt.Sprintf("\n  Port %d\n", c.server.Port)) {
		t.Errorf("the managed ssh block lacks the cache's port:\n%s", managed)
	}

	// Before the admin registers the key, doctor's login on the channel
	// is refused, and the hint is the admin's line.
	if d := onMachine(m, "client", "doctor"); d.Err == nil || !strings.Contains(d.Stdout, "✗ ssh login: ") ||
		!strings.Contains(d.Stdout, "hint: nixcache clients add ") {
		t.Errorf("doctor before the key is registered: %v\n%s", d.Err, d.Stdout)
	}

	// The admin runs the line join printed against the server's registry.
	c.registryFile = c.server.Registry()
	line := strings.TrimSpace(r.Stdout)
	if !strings.HasPrefix(line, "nixcache clients add ") || strings.Contains(line, "\n") {
		t.Fatalf("join printed no command for the admin:\n%s", r.Stdout)
	}
	if add := harness.Run(env.Environ("PATH="+filepath.Dir(nixcache)+":"+os.Getenv("PATH")), "sh", "-c", line+` --registry "$1"`, "sh", c.registryFile); add.Err != nil {
		t.Fatal(add.Err)
	}
	keys := clients(t, c.registryFile, "authorized-keys")
	if err := c.server.Authorize(strings.Split(strings.TrimSuffix(keys, "\n"), "\n")...); err != nil {
		t.Fatal(err)
	}

	// No service manager: the machine's admin starts the command join
	// printed, as it is, before the daemon restarts.
	sub := startPrinted(t, r.Stderr, m)
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	probe := cl.Paths[0]
	d := onMachine(m, "client", "doctor", "--path", probe)
	for _, want := range []string{
		fmt.Sprintf("✓ substituter: http://127.0.0.1:%d answers", port),
		"✓ ssh login: logged in as " + harness.CacheUser + "; nixcache serve answers on the channel",
		"✓ narinfo: the substituter serves the narinfo of " + probe,
		"✓ substitution: " + probe,
	} {
		if !strings.Contains(d.Stdout, want) {
			t.Errorf("doctor does not say %q:\n%s\nsubstituter:\n%s", want, d.Stdout, sub.log())
		}
	}
	if d.Err != nil {
		t.Errorf("doctor failed: %v\n%s", d.Err, d.Stdout)
	}
	if r := m.Realise(cl.Top); r.Err != nil {
		t.Fatalf("substituting through the substituter: %v\nsubstituter:\n%s", r.Err, sub.log())
	}
	for _, p := range cl.Paths {
		if !m.Has(p) {
			t.Errorf("%s was not substituted", p)
		}
	}
	if logins := strings.Count(c.server.Log(), "Accepted publickey"); logins != 2 {
		// The substituter's connection and doctor's login.
		t.Errorf("%d SSH logins, want 2 (the substituter and doctor)", logins)
	}

	// A second join changes nothing and prints the same command.
	before := snapshot(t, m.ConfDir, m.SSHDir)
	again := onMachine(m, args...)
	if again.Err != nil || !strings.Contains(again.Stderr, "nothing to change") || printedCommand(t, again.Stderr) != printedCommand(t, r.Stderr) {
		t.Errorf("second join: %v\n%s", again.Err, again.Stderr)
	}
	sameFiles(t, "second join", before, snapshot(t, m.ConfDir, m.SSHDir))

	// With the substituter stopped, doctor fails and says how to start it.
	sub.stop()
	d = onMachine(m, "client", "doctor")
	t.Logf("doctor with the substituter stopped:\n%s", d.Stdout)
	if d.Err == nil || !strings.Contains(d.Stdout, fmt.Sprintf("✗ substituter: http://127.0.0.1:%d does not answer", port)) ||
		!strings.Contains(d.Stdout, "hint: start it as root and keep it running") || !strings.Contains(d.Stdout, printedCommand(t, r.Stderr)) ||
		!strings.Contains(d.Stdout, "Nix 2.8 aborts builds") {
		t.Errorf("doctor with the substituter stopped: %v\n%s", d.Err, d.Stdout)
	}
}

// printedCommand is the substituter's command join printed, alone on its
// indented line.
func printedCommand(t *testing.T, stderr string) string {
	t.Helper()
	command := harness.SubstituterCommand(stderr)
	if command == "" {
		t.Fatalf("join printed no substituter command:\n%s", stderr)
	}
	return command
}

type printedSubstituter struct {
	cmd     *exec.Cmd
	logPath string
}

func (s *printedSubstituter) log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// stop ends the substituter by its PID and waits for it.
func (s *printedSubstituter) stop() {
	if s.cmd.ProcessState == nil {
		s.cmd.Process.Signal(syscall.SIGTERM)
		s.cmd.Wait()
	}
}

// startPrinted runs the command join printed through sh, which execs it,
// so that the PID is the substituter's, and waits until it serves.
func startPrinted(t *testing.T, joinStderr string, m *harness.Machine) *printedSubstituter {
	t.Helper()
	s := &printedSubstituter{logPath: filepath.Join(t.TempDir(), "substituter.log")}
	logFile, err := os.Create(s.logPath)
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	s.cmd = exec.Command("sh", "-c", "exec "+printedCommand(t, joinStderr))
	s.cmd.Env = m.Environ()
	s.cmd.Stdout, s.cmd.Stderr = logFile, logFile
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.stop)
	p := &substituterProcess{logPath: s.logPath}
	p.waitLog(t, "serving")
	if !strings.Contains(s.log(), "connected to the cache") {
		t.Fatalf("the substituter serves without a connection:\n%s", s.log())
	}
	return s
}
