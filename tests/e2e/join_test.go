//go:build harness

package e2e

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixcache/nixcache/internal/sshconf"
	"github.com/nixcache/nixcache/tests/harness"
)

// debianNixConf is nix.conf as Debian's nix-bin ships it, plus what the
// harness needs to build, and a comment an admin left.
const debianNixConf = `# Debian's nix.conf, edited by an admin.
sandbox = false
build-users-group = nixbld   # the daemon builds as these users
experimental-features = nix-command
`

// newMachine makes a client machine whose daemon serves a fresh store
// (chroot) or, for tests that build, the machine's own store.
func newMachine(t *testing.T, nixConf string, chroot bool) *harness.Machine {
	t.Helper()
	dir, err := os.MkdirTemp(env.Dir, "machine-")
	if err != nil {
		t.Fatal(err)
	}
	m, err := env.NewMachine(dir, nixConf, chroot)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Close)
	return m
}

// onMachine runs nixcache on m as root, pointed at m's files; the service
// manager is "none" because the test restarts m's daemon itself.
func onMachine(m *harness.Machine, args ...string) harness.Result {
	args = append(args, "--nix-conf-dir", m.ConfDir, "--ssh-dir", m.SSHDir, "--service-manager", "none", "--name", filepath.Base(m.Dir))
	return harness.Run(m.Environ(), nixcache, args...)
}

func (c *cache) url(proto harness.Protocol) string {
	return fmt.Sprintf("%s://%s@127.0.0.1:%d", proto, harness.CacheUser, c.server.Port)
}

func hostKeyFingerprint(t *testing.T, line string) string {
	t.Helper()
	k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line))
	if err != nil {
		t.Fatal(err)
	}
	return ssh.FingerprintSHA256(k)
}

// join runs `client join` with the cache's fingerprint and registers the
// key it prints on the server, as the admin would.
func (c *cache) join(t *testing.T, m *harness.Machine, extra ...string) harness.Result {
	t.Helper()
	args := append([]string{"client", "join", "--cache", c.url(c.server.Protocol), "--public-key", c.publicKey,
		"--host-key-fingerprint", hostKeyFingerprint(t, c.server.HostKey)}, extra...)
	r := onMachine(m, args...)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	return r
}

// admit has the admin run the command join printed ("nixcache clients add
// NAME --key 'LINE'") against the cache's registry, and installs the
// authorized_keys rendered from it.
func (c *cache) admit(t *testing.T, joinOutput string) {
	t.Helper()
	line := strings.TrimSpace(joinOutput)
	if !strings.HasPrefix(line, "nixcache clients add ") || strings.Contains(line, "\n") {
		t.Fatalf("join printed no command for the admin:\n%s", joinOutput)
	}
	r := harness.Run(env.Environ("PATH="+filepath.Dir(nixcache)+":"+os.Getenv("PATH")), "sh", "-c", line+` --registry "$1"`, "sh", c.registry(t))
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	authorize(t, c.server, c.registry(t), c.server.Protocol)
}

// revoke removes a machine from the registry and installs the result.
func (c *cache) revoke(t *testing.T, name string) {
	t.Helper()
	clients(t, c.registry(t), "remove", name)
	authorize(t, c.server, c.registry(t), c.server.Protocol)
}

// registry is the cache's clients registry, made on first use.
func (c *cache) registry(t *testing.T) string {
	if c.registryFile == "" {
		c.registryFile = filepath.Join(t.TempDir(), "clients.toml")
	}
	return c.registryFile
}

// snapshot records every file under dirs: contents and mode.
func snapshot(t *testing.T, dirs ...string) map[string]string {
	t.Helper()
	files := map[string]string{}
	for _, dir := range dirs {
		filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
			if errors.Is(err, fs.ErrNotExist) {
				return nil
			}
			if err != nil {
				t.Fatal(err)
			}
			if d.IsDir() {
				return nil
			}
			info, err := os.Lstat(path)
			if err != nil {
				t.Fatal(err)
			}
			data, _ := os.ReadFile(path)
			files[path] = fmt.Sprintf("%v %q", info.Mode(), data)
			return nil
		})
	}
	return files
}

func sameFiles(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	for p, v := range after {
		if before[p] != v {
			t.Errorf("%s: %s changed or appeared", what, p)
		}
	}
	for p := range before {
		if _, ok := after[p]; !ok {
			t.Errorf("%s: %s disappeared", what, p)
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// The whole story on a non-default port (sshd always listens on one here,
// which Nix 2.8 cannot put in a store URL): join, the admin registers the
// key, the daemon restarts and substitutes a signed closure; a second join
// changes nothing at all.
func TestJoinThenSubstitute(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto harness.Protocol) {
		c := newCache(t, proto)
		cl := build(t, 3)
		sign(t, c.secretKey, cl.Paths...)
		m := newMachine(t, debianNixConf, true)

		r := c.join(t, m)
		c.admit(t, r.Stdout)
		conf := readFile(t, filepath.Join(m.ConfDir, "nix.conf"))
		if !strings.HasPrefix(conf, debianNixConf) {
			t.Errorf("join did not keep nix.conf's lines verbatim:\n%s", conf)
		}
		if err := m.Restart(); err != nil {
			t.Fatal(err)
		}
		// doctor has the daemon substitute a path the machine lacks (named,
		// since an ssh:// cache cannot list its paths).
		probe := cl.Paths[0]
		if d := onMachine(m, "client", "doctor", "--path", probe); d.Err != nil || !strings.Contains(d.Stdout, "✓ substitution: "+probe) {
			t.Errorf("doctor --path %s: %v\n%s", probe, d.Err, d.Stdout)
		}
		if !m.Has(probe) {
			t.Errorf("doctor's probe %s was not substituted", probe)
		}
		if r := m.Realise(cl.Top); r.Err != nil {
			t.Fatalf("substituting after join: %v", r.Err)
		}
		for _, p := range cl.Paths {
			if !m.Has(p) {
				t.Errorf("%s was not substituted", p)
			}
		}
		// cache.nixos.org stays: Nix's default is still in effect.
		show := harness.Run(m.Environ("NIX_CONF_DIR="+m.ConfDir), "nix", "show-config")
		if show.Err != nil {
			t.Fatal(show.Err)
		}
		for _, want := range []string{"https://cache.nixos.org/", c.publicKey, "cache.nixos.org-1:"} {
			if !strings.Contains(show.Stdout, want) {
				t.Errorf("nix show-config lacks %q after join", want)
			}
		}

		before := snapshot(t, m.ConfDir, m.SSHDir)
		again := c.join(t, m)
		sameFiles(t, "second join", before, snapshot(t, m.ConfDir, m.SSHDir))
		if !strings.Contains(again.Stderr, "nothing to change") {
			t.Errorf("second join did not say it changed nothing:\n%s", again.Stderr)
		}
		if again.Stdout != r.Stdout {
			t.Errorf("second join printed a different line for the admin:\n%s\nthen\n%s", r.Stdout, again.Stdout)
		}

		if d := onMachine(m, "client", "doctor"); d.Err != nil {
			t.Errorf("doctor fails after a good join: %v\n%s", d.Err, d.Stdout)
		}
	})
}

// A host key that does not match the server's, given by fingerprint or as
// the key itself, aborts before anything is written.
func TestJoinWithTheWrongHostKeyChangesNothing(t *testing.T) {
	c := newCache(t, harness.SSHNG)
	m := newMachine(t, debianNixConf, true)
	before := snapshot(t, m.ConfDir, m.SSHDir)
	other := newCache(t, harness.SSHNG) // another server's key
	for _, source := range [][]string{
		{"--host-key-fingerprint", hostKeyFingerprint(t, other.server.HostKey)},
		{"--host-key", other.server.HostKey},
	} {
		args := append([]string{"client", "join", "--cache", c.url(harness.SSHNG), "--public-key", c.publicKey}, source...)
		r := onMachine(m, args...)
		if r.Err == nil {
			t.Fatalf("join %s accepted a host key the server does not have", source[0])
		}
		if !strings.Contains(r.Stderr, "presents host key") || !strings.Contains(r.Stderr, "nothing was changed") {
			t.Errorf("join %s: unclear refusal:\n%s", source[0], r.Stderr)
		}
	}
	sameFiles(t, "refused join", before, snapshot(t, m.ConfDir, m.SSHDir))
}

// A pinned host key that the server no longer presents stops a later join,
// however the new key is offered.
func TestJoinRefusesAChangedHostKey(t *testing.T) {
	c := newCache(t, harness.SSHNG)
	m := newMachine(t, debianNixConf, true)
	c.join(t, m)
	if err := c.server.ReplaceHostKey(); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, m.ConfDir, m.SSHDir)
	for _, source := range [][]string{
		{"--trust-on-first-use"},
		{"--host-key-fingerprint", hostKeyFingerprint(t, c.server.HostKey)},
		{"--host-key", c.server.HostKey},
	} {
		args := append([]string{"client", "join", "--cache", c.url(harness.SSHNG), "--public-key", c.publicKey}, source...)
		r := onMachine(m, args...)
		if r.Err == nil || !strings.Contains(r.Stderr, "has changed") || !strings.Contains(r.Stderr, "nixcache_known_hosts") {
			t.Errorf("join %s accepted a server whose host key changed: %v\n%s", source[0], r.Err, r.Stderr)
		}
	}
	sameFiles(t, "refused join", before, snapshot(t, m.ConfDir, m.SSHDir))
}

// A nix.conf Nix would reject is reported with its line, and left alone.
func TestJoinRefusesAMalformedNixConf(t *testing.T) {
	c := newCache(t, harness.SSHNG)
	m := newMachine(t, debianNixConf, true)
	bad := debianNixConf + "substituters https://cache.nixos.org/\n"
	if err := os.WriteFile(filepath.Join(m.ConfDir, "nix.conf"), []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, m.ConfDir, m.SSHDir)
	r := onMachine(m, "client", "join", "--cache", c.url(harness.SSHNG), "--public-key", c.publicKey,
		"--host-key", c.server.HostKey)
	if r.Err == nil {
		t.Fatal("join accepted a malformed nix.conf")
	}
	if !strings.Contains(r.Stderr, `nix.conf" line 5`) {
		t.Errorf("the error does not give the line:\n%s", r.Stderr)
	}
	sameFiles(t, "refused join", before, snapshot(t, m.ConfDir, m.SSHDir))
}

// Determinate Nix generates nix.conf and includes nix.custom.conf for the
// admin's settings: join edits the latter.
func TestJoinEditsDeterminateNixCustomConf(t *testing.T) {
	c := newCache(t, harness.SSHNG)
	determinate := "# Generated by Determinate Nix. Do not edit.\n" + debianNixConf +
		"extra-trusted-public-keys = cache.flakehub.com-3:hJuILl5sVK4iKm86JzgdXW12Y2Hwd5G07qKtHTOcDCM=\n!include nix.custom.conf\n"
	m := newMachine(t, determinate, true)
	r := c.join(t, m)
	if got := readFile(t, filepath.Join(m.ConfDir, "nix.conf")); got != determinate {
		t.Errorf("join edited Determinate's nix.conf:\n%s", got)
	}
	custom := readFile(t, filepath.Join(m.ConfDir, "nix.custom.conf"))
	if !strings.Contains(custom, "extra-substituters = "+fmt.Sprintf("ssh-ng://%s@127.0.0.1", harness.CacheUser)) ||
		!strings.Contains(custom, "extra-trusted-public-keys = "+c.publicKey) {
		t.Errorf("nix.custom.conf lacks the cache:\n%s", custom)
	}
	c.admit(t, r.Stdout)
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	cl := build(t, 1)
	sign(t, c.secretKey, cl.Top)
	if r := m.Realise(cl.Top); r.Err != nil {
		t.Fatalf("substituting with Determinate's layout: %v", r.Err)
	}
}

// On NixOS nix.conf is a link into the store: join prints the module's
// configuration instead, or writes it, and changes nothing else.
func TestJoinOnAReadOnlyNixConfPrintsTheModule(t *testing.T) {
	c := newCache(t, harness.SSHNG)
	m := newMachine(t, debianNixConf, true)
	add := harness.Run(env.Environ(), "nix-store", "--add", filepath.Join(m.ConfDir, "nix.conf"))
	if add.Err != nil {
		t.Fatal(add.Err)
	}
	conf := filepath.Join(m.ConfDir, "nix.conf")
	if err := os.Remove(conf); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(strings.TrimSpace(add.Stdout), conf); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, m.ConfDir, m.SSHDir)
	r := onMachine(m, "client", "join", "--cache", c.url(harness.SSHNG), "--public-key", c.publicKey,
		"--host-key-fingerprint", hostKeyFingerprint(t, c.server.HostKey))
	if r.Err == nil {
		t.Fatal("join did not refuse a read-only nix.conf")
	}
	for _, want := range []string{"services.nixcache.client", "enable = true;", `host = "127.0.0.1";`,
		fmt.Sprintf("port = %d;", c.server.Port), fmt.Sprintf("publicKey = %q;", c.publicKey), fmt.Sprintf("hostKey = %q;", c.server.HostKey)} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("the module snippet lacks %q:\n%s", want, r.Stdout)
		}
	}
	sameFiles(t, "refused join", before, snapshot(t, m.ConfDir, m.SSHDir))

	module := filepath.Join(m.Dir, "nixcache-client.nix")
	r = onMachine(m, "client", "join", "--cache", c.url(harness.SSHNG), "--public-key", c.publicKey,
		"--host-key", c.server.HostKey, "--nixos-module", module)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	if got := readFile(t, module); !strings.Contains(got, "services.nixcache.client") {
		t.Errorf("--nixos-module wrote:\n%s", got)
	}
	if p := harness.Run(env.Environ(), "nix-instantiate", "--parse", module); p.Err != nil {
		t.Errorf("the module does not parse: %v", p.Err)
	}
	sameFiles(t, "join --nixos-module", before, snapshot(t, m.ConfDir, m.SSHDir))
}

// --dry-run shows the changes as diffs and makes none.
func TestJoinDryRunChangesNothing(t *testing.T) {
	c := newCache(t, harness.SSH)
	m := newMachine(t, debianNixConf, true)
	before := snapshot(t, m.ConfDir, m.SSHDir)
	r := c.join(t, m, "--dry-run")
	sameFiles(t, "dry run", before, snapshot(t, m.ConfDir, m.SSHDir))
	for _, want := range []string{"would create the daemon's ssh key", "+++ " + filepath.Join(m.ConfDir, "nix.conf"),
		"+Include " + filepath.Join(m.SSHDir, "nixcache_config"), "+Match originalhost 127.0.0.1 user nix-ssh",
		fmt.Sprintf("+  Port %d", c.server.Port)} {
		if !strings.Contains(r.Stdout, want) {
			t.Errorf("dry run output lacks %q:\n%s", want, r.Stdout)
		}
	}
}

// doctor passes after a join, and names each broken piece with its fix.
func TestDoctorFindsEachBrokenPiece(t *testing.T) {
	c := newCache(t, harness.SSHNG)
	cl := build(t, 2)
	sign(t, c.secretKey, cl.Paths...)
	original := debianNixConf
	m := newMachine(t, original, true)
	r := c.join(t, m)
	registered := r.Stdout
	c.admit(t, registered)
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	doctor := func(wantOK bool, failing ...string) string {
		t.Helper()
		d := onMachine(m, "client", "doctor")
		if (d.Err == nil) != wantOK {
			t.Errorf("doctor: error %v, want ok=%v\n%s", d.Err, wantOK, d.Stdout)
		}
		for _, f := range failing {
			if !strings.Contains(d.Stdout, "✗ "+f) {
				t.Errorf("doctor does not fail %q:\n%s", f, d.Stdout)
			}
		}
		return d.Stdout
	}
	out := doctor(true)
	if !strings.Contains(out, "✓ substitution") {
		t.Errorf("doctor did not check a substitution:\n%s", out)
	}
	js := onMachine(m, "client", "doctor", "--json")
	var report struct {
		OK     bool `json:"ok"`
		Checks []struct {
			Check, Status string
		} `json:"checks"`
	}
	if err := json.Unmarshal([]byte(js.Stdout), &report); err != nil || js.Err != nil || !report.OK || len(report.Checks) < 7 {
		t.Errorf("doctor --json: %v, %v, %+v\n%s", js.Err, err, report, js.Stdout)
	}

	// The admin removes the machine from the registry.
	c.revoke(t, filepath.Base(m.Dir))
	out = doctor(false, "ssh login")
	if !strings.Contains(out, "nixcache clients add '"+filepath.Base(m.Dir)+"' --key 'ssh-ed25519 ") {
		t.Errorf("no hint to register the key:\n%s", out)
	}
	c.admit(t, registered)
	doctor(true)

	// The server's host key changes (reinstalled, or someone in the middle).
	if err := c.server.ReplaceHostKey(); err != nil {
		t.Fatal(err)
	}
	out = doctor(false, "host key")
	if !strings.Contains(out, "has changed") || !strings.Contains(out, "do not proceed") {
		t.Errorf("doctor does not say the host key changed:\n%s", out)
	}
	// The admin confirms the new key; as the hint says, the old pin goes
	// and the machine joins again.
	if err := os.Remove(filepath.Join(m.SSHDir, "nixcache_known_hosts")); err != nil {
		t.Fatal(err)
	}
	c.join(t, m)
	doctor(true)

	// nix.conf reverted to what it was: the daemon's settings are stale
	// until it restarts, then they lack the cache.
	if err := os.WriteFile(filepath.Join(m.ConfDir, "nix.conf"), []byte(original), 0o644); err != nil {
		t.Fatal(err)
	}
	doctor(false, "nix.conf", "daemon restarted")
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	out = doctor(false, "nix.conf")
	if strings.Contains(out, "✗ daemon restarted") {
		t.Errorf("doctor says the daemon was not restarted after it was:\n%s", out)
	}

	// Joined again, but the daemon not restarted.
	c.join(t, m)
	doctor(false, "daemon restarted")
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	doctor(true)

	// sshd down.
	c.server.Close()
	out = doctor(false, "host key")
	if !strings.Contains(out, "is sshd running") {
		t.Errorf("no hint that the cache is down:\n%s", out)
	}
}

func TestDoctorWithoutJoin(t *testing.T) {
	m := newMachine(t, debianNixConf, true)
	d := onMachine(m, "client", "doctor")
	if d.Err == nil || !strings.Contains(d.Stdout, "✗ joined") || !strings.Contains(d.Stdout, "nixcache client join") {
		t.Errorf("doctor on a machine that never joined: %v\n%s", d.Err, d.Stdout)
	}
	if bytes.Contains([]byte(d.Stdout), []byte("✓")) {
		t.Errorf("doctor passed checks on a machine that never joined:\n%s", d.Stdout)
	}
}

// fallbackExpr is a derivation no cache has, built with the machine's
// /bin/sh: what a client builds while its cache is down.
// Three derivations in a chain, so that the cost per path asked shows.
const fallbackExpr = `{ nonce }:
let step = name: dep: derivation {
  inherit name;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  args = [ "-c" "echo ${nonce} ${dep} > $out" ];
};
in step "fallback-3-${nonce}" (step "fallback-2-${nonce}" (step "fallback-1-${nonce}" ""))`

// With the cache down, a build that asks it for substitutes must still
// build, and soon: refused connections fail at once; a host that accepts
// the connection and then says nothing costs ssh's ConnectTimeout (5s) per
// connection attempt. The times are in the README.
func TestCacheDownFallsBackToBuilding(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto harness.Protocol) {
		c := newCache(t, proto)
		// No cache.nixos.org: this machine has no internet, and its retries
		// would blur the measurement.
		m := newMachine(t, debianNixConf+"substituters =\n", false)
		c.admit(t, c.join(t, m).Stdout)
		if err := m.Restart(); err != nil {
			t.Fatal(err)
		}
		expr := filepath.Join(m.Dir, "fallback.nix")
		if err := os.WriteFile(expr, []byte(fallbackExpr), 0o644); err != nil {
			t.Fatal(err)
		}
		addr := c.server.Addr()
		c.server.Close()

		buildTime := func(what string) time.Duration {
			t.Helper()
			start := time.Now()
			r := harness.Run(m.Environ(), "nix-build", "--no-out-link", expr, "--argstr", "nonce", harness.Nonce())
			took := time.Since(start)
			if r.Err != nil {
				t.Fatalf("%s: the build did not fall back to building: %v", what, r.Err)
			}
			t.Logf("%s: built in %v", what, took.Round(10*time.Millisecond))
			return took
		}
		if took := buildTime("sshd down (connection refused)"); took > 30*time.Second {
			t.Errorf("sshd down: the build took %v", took)
		}

		// A cache that accepts TCP connections and never answers.
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		var held []net.Conn
		var mu sync.Mutex
		go func() {
			for {
				conn, err := l.Accept()
				if err != nil {
					return
				}
				mu.Lock()
				held = append(held, conn)
				mu.Unlock()
			}
		}()
		t.Cleanup(func() {
			l.Close()
			mu.Lock()
			defer mu.Unlock()
			for _, conn := range held {
				conn.Close()
			}
		})
		if took := buildTime("cache silent (accepts, never answers)"); took > 90*time.Second {
			t.Errorf("silent cache: the build took %v", took)
		}
	})
}

// max-connections > 1 deadlocks Nix before 2.32 (Lix before 2.93): join asks
// the daemon its version and refuses there, changing nothing; where it is
// safe, the substituter gets the parameter. (Only Nix 2.8 ran here.)
func TestJoinMaxConnectionsOnlyWhereNixCopes(t *testing.T) {
	c := newCache(t, harness.SSHNG)
	m := newMachine(t, debianNixConf, true)
	before := snapshot(t, m.ConfDir, m.SSHDir)
	r := onMachine(m, "client", "join", "--cache", c.url(harness.SSHNG), "--public-key", c.publicKey,
		"--host-key", c.server.HostKey, "--max-connections", "8")
	if sshconf.MaxConnectionsSafe(daemonVersion(t)) == nil {
		if r.Err != nil || !strings.Contains(readFile(t, filepath.Join(m.ConfDir, "nix.conf")), "?max-connections=8") {
			t.Errorf("join --max-connections 8 on Nix %s: %v", daemonVersion(t), r.Err)
		}
		return
	}
	if r.Err == nil || !strings.Contains(r.Stderr, "hangs with max-connections > 1") || !strings.Contains(r.Stderr, "nothing was changed") {
		t.Errorf("join accepted max-connections on a Nix that hangs with it: %v\n%s", r.Err, r.Stderr)
	}
	sameFiles(t, "refused join", before, snapshot(t, m.ConfDir, m.SSHDir))
}

// A machine name is checked by the registry's rules before join changes
// anything: the name ends up in the line the admin pastes into a shell.
func TestJoinRefusesAHostileName(t *testing.T) {
	c := newCache(t, harness.SSHNG)
	m := newMachine(t, debianNixConf, true)
	marker := filepath.Join(t.TempDir(), "pwned")
	before := snapshot(t, m.ConfDir, m.SSHDir)
	r := harness.Run(m.Environ(), nixcache, "client", "join", "--cache", c.url(harness.SSHNG), "--public-key", c.publicKey,
		"--host-key", c.server.HostKey, "--nix-conf-dir", m.ConfDir, "--ssh-dir", m.SSHDir, "--service-manager", "none",
		"--name", "b01'$(touch "+marker+")'")
	if r.Err == nil || !strings.Contains(r.Stderr, "is not allowed") || !strings.Contains(r.Stderr, "--name") {
		t.Errorf("join accepted a name no registry takes: %v\n%s\n%s", r.Err, r.Stdout, r.Stderr)
	}
	sameFiles(t, "refused join", before, snapshot(t, m.ConfDir, m.SSHDir))
}

// An attacker who once ran join with a hostile name left it in the key's
// .pub comment; a later, honest join must still print a line that, pasted
// into the admin's shell, runs nixcache with exactly the expected arguments
// and nothing else.
func TestJoinPrintsALineSafeToPaste(t *testing.T) {
	c := newCache(t, harness.SSHNG)
	m := newMachine(t, debianNixConf, true)
	work := t.TempDir()
	marker := filepath.Join(work, "pwned")
	if err := os.MkdirAll(m.SSHDir, 0o700); err != nil {
		t.Fatal(err)
	}
	key := filepath.Join(m.SSHDir, "nixcache_ed25519")
	hostile := "b01'$(touch " + marker + ")'`touch " + marker + "`;touch " + marker
	if r := harness.Run(env.Environ(), "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", hostile, "-f", key); r.Err != nil {
		t.Fatal(r.Err)
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey([]byte(readFile(t, key+".pub")))
	if err != nil {
		t.Fatal(err)
	}
	name := filepath.Base(m.Dir)
	line := strings.TrimSpace(c.join(t, m).Stdout)

	got := pasted(t, work, line)
	want := []string{"clients", "add", name, "--key", strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub))) + " nixcache@" + name}
	if strings.Join(got, "\x00") != strings.Join(want, "\x00") {
		t.Errorf("the pasted line %q ran nixcache with %q, want %q", line, got, want)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Errorf("pasting %q ran a command of the key comment's", line)
	}
}

// pasted runs line with sh, as an admin's paste does, with a nixcache on
// PATH that records its arguments, and returns them.
func pasted(t *testing.T, dir, line string) []string {
	t.Helper()
	bin := filepath.Join(dir, "bin")
	argv := filepath.Join(dir, "argv")
	if err := os.MkdirAll(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	fake := "#!/bin/sh\nprintf '%s\\0' \"$@\" > " + argv + "\n"
	if err := os.WriteFile(filepath.Join(bin, "nixcache"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	r := harness.Run([]string{"PATH=" + bin + ":/usr/bin:/bin"}, "/bin/sh", "-c", line)
	if r.Err != nil {
		t.Fatalf("sh -c %q: %v\n%s", line, r.Err, r.Stderr)
	}
	data, err := os.ReadFile(argv)
	if err != nil {
		t.Fatalf("the pasted line %q did not run nixcache: %v", line, err)
	}
	return strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
}

// Root's own IdentityFile lines apply to the cache too, and no setting in
// the managed block can stop ssh offering those keys when the daemon's is
// refused: join says so, and names them.
func TestJoinWarnsOfRootsOtherKeys(t *testing.T) {
	c := newCache(t, harness.SSHNG)
	m := newMachine(t, debianNixConf, true)
	other := filepath.Join(m.SSHDir, "id_other")
	if err := os.MkdirAll(m.SSHDir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.SSHDir, "config"), []byte("Host *\n  IdentityFile "+other+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r := c.join(t, m)
	if !strings.Contains(r.Stderr, "also gives the cache account these keys: "+other) || !strings.Contains(r.Stderr, "hint: move those IdentityFile lines") {
		t.Errorf("join did not warn of root's other key:\n%s", r.Stderr)
	}
	// And doctor keeps saying so, long after join's output is gone.
	d := onMachine(m, "client", "doctor")
	if !strings.Contains(d.Stdout, "! ssh keys: root's ssh configuration also offers "+other) {
		t.Errorf("doctor did not warn of root's other key:\n%s%s", d.Stdout, d.Stderr)
	}
}
