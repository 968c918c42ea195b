// Package harness runs a real private Nix cache on this machine for tests:
// a nix-daemon of its own, sshd on loopback with a nix-ssh account forced
// into `nix-store --serve` or `nix-daemon --stdio` (as NixOS's nix.sshServe
// configures it), closures built into the server store, and fresh client
// stores that substitute from it.
//
// It needs root, Nix and OpenSSH; a missing piece is a test failure, never a
// skip. Everything it starts is stopped by PID, and it changes nothing in
// /etc or /root: the nix-ssh account exists only inside the mount namespace
// sshd runs in, and HOME points into a temporary directory.
package harness

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/nixkey"
)

// CommandTimeout bounds every command the harness runs, so that a hung ssh
// or Nix fails the test instead of stalling CI.
const CommandTimeout = 2 * time.Minute

// Env is the shared part of a test binary's setup: a nix-daemon of its own on
// a private socket, serving the machine's /nix/store.
type Env struct {
	// Dir is root-owned and world-traversable (sshd's StrictModes and the
	// nix-ssh account need that); it holds sockets, keys and configs.
	Dir string
	// Socket is the private daemon's socket.
	Socket string
	// ConfDir holds the nix.conf the daemon and the server-side tools read.
	ConfDir string
	// Home is HOME for every command, so nothing is written to /root.
	Home string
	// CacheSecretKey is the file of a Nix signing key made for this Env,
	// and CachePublicKey its public key, "name:base64". The daemon trusts
	// it (trusted-public-keys): a publisher that signs with it may import
	// input-addressed paths as an untrusted daemon user (docs/uploads.md).
	CacheSecretKey, CachePublicKey string

	daemon       *Process
	nixcache     string
	nixcacheOnce sync.Once
	nixcacheErr  error
	// ownroot starts the daemons and the client stores' Nix commands
	// (tests/harness/ownroot).
	ownroot string
}

// Requirements are the programs the harness runs.
var Requirements = []string{"nix-daemon", "nix-store", "nix-build", "nix", "sshd", "ssh", "ssh-keygen", "mount"}

// Start checks the requirements and starts the daemon. Call Close when done.
func Start() (*Env, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the end-to-end harness must run as root (it starts sshd and a nix-daemon)")
	}
	var missing []string
	for _, p := range Requirements {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		return nil, fmt.Errorf("missing programs %s: run scripts/deps.sh (apt-get install nix-bin openssh-server openssh-client)", strings.Join(missing, ", "))
	}
	// /run is root-owned 0755 and not world-writable like /tmp, which
	// sshd's StrictModes requires of every directory above authorized_keys.
	dir, err := os.MkdirTemp("/run", "nixcache-e2e-")
	if err != nil {
		return nil, err
	}
	e := &Env{Dir: dir, Socket: filepath.Join(dir, "daemon", "socket"), ConfDir: filepath.Join(dir, "nix"), Home: filepath.Join(dir, "home")}
	if err := e.start(); err != nil {
		e.Close()
		return nil, err
	}
	return e, nil
}

func (e *Env) start() error {
	if err := os.Chmod(e.Dir, 0o755); err != nil {
		return err
	}
	for _, d := range []string{filepath.Dir(e.Socket), e.ConfDir, e.Home} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	key, err := nixkey.Generate("nixcache-e2e-" + Nonce() + "-1")
	if err != nil {
		return err
	}
	e.CacheSecretKey, e.CachePublicKey = filepath.Join(e.Dir, "cache-secret-key"), key.Public().String()
	if err := nixkey.WriteSecretKeyFile(e.CacheSecretKey, key, false); err != nil {
		return err
	}
	// The daemon builds test derivations whose builder is /bin/sh, which
	// needs no nixpkgs but does need the sandbox off. It trusts the Env's
	// cache key alone: what the publisher imports must carry its signature.
	conf := "sandbox = false\nexperimental-features = nix-command\nbuild-users-group = nixbld\n" +
		"trusted-public-keys = " + e.CachePublicKey + "\n"
	if err := os.WriteFile(filepath.Join(e.ConfDir, "nix.conf"), []byte(conf), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(e.closureExpr(), []byte(closureExpr), 0o644); err != nil {
		return err
	}
	// sshd's privilege separation directory, which the openssh-server
	// service makes at boot; without systemd nobody has. It stays: test
	// binaries run in parallel and share it, and it lives in /run.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		return err
	}
	e.ownroot = filepath.Join(e.Dir, "ownroot")
	if out, err := exec.Command("go", "build", "-o", e.ownroot, "github.com/nixcache/nixcache/tests/harness/ownroot").CombinedOutput(); err != nil {
		return fmt.Errorf("building ownroot: %v\n%s", err, out)
	}
	// Not e.Environ(): with NIX_REMOTE=daemon the daemon would serve its
	// own socket instead of the store.
	e.daemon, err = e.StartDaemonWith(e.baseEnviron(), e.Socket, filepath.Join(e.Dir, "nix-daemon.log"))
	return err
}

// OwnRoot is the ownroot command (tests/harness/ownroot): a test that
// needs a mount namespace of its own, or an unprivileged user namespace
// (which the kernel refuses to a chrooted process), runs its command
// through it, so that it works in a chroot too.
func (e *Env) OwnRoot() string { return e.ownroot }

// StartDaemon starts a nix-daemon for another store (a chroot store's URI,
// such as "local?root=/some/dir") on socket, with the Env's configuration.
// The returned function stops it.
func (e *Env) StartDaemon(store, socket string) (stop func(), err error) {
	p, err := e.StartDaemonWith(e.baseEnviron(), socket, socket+".log", "--option", "store", store)
	if err != nil {
		return nil, err
	}
	return p.Stop, nil
}

// StartDaemonWith starts nix-daemon (through ownroot) listening on socket,
// with env (its NIX_CONF_DIR among it), extra arguments and its output in
// logPath, and waits until it answers the handshake.
func (e *Env) StartDaemonWith(env []string, socket, logPath string, args ...string) (*Process, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	// Through ownroot: Nix 2.8's daemon would run ssh outside a chroot.
	cmd := exec.Command(e.ownroot, append([]string{"nix-daemon"}, args...)...)
	cmd.Env = append(slices.DeleteFunc(slices.Clone(env), func(s string) bool {
		return strings.HasPrefix(s, "NIX_DAEMON_SOCKET_PATH=")
	}), "NIX_DAEMON_SOCKET_PATH="+socket)
	cmd.Stdout, cmd.Stderr = log, log
	p, err := StartProcess(cmd)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		c, err := daemon.Dial(ctx, socket)
		if err == nil {
			return p, c.Close()
		}
		if exited, werr := p.Exited(); exited {
			return nil, fmt.Errorf("nix-daemon exited at start (%v); see %s", werr, logPath)
		}
		if ctx.Err() != nil {
			p.Stop()
			return nil, fmt.Errorf("nix-daemon did not answer on %s: %v (log: %s)", socket, err, logPath)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// Close stops the daemon (its process group: the listener and the processes
// it forked per connection) and removes the directory.
func (e *Env) Close() {
	e.daemon.Stop()
	os.RemoveAll(e.Dir)
}

// Environ is the environment for commands that act on the server's store:
// Nix tools and nixcache reach the private daemon, and HOME is private.
func (e *Env) Environ(extra ...string) []string {
	return append(e.baseEnviron(), append([]string{"NIX_REMOTE=daemon"}, extra...)...)
}

func (e *Env) baseEnviron() []string {
	return nixEnviron(e.Home, e.ConfDir, "NIX_DAEMON_SOCKET_PATH="+e.Socket)
}

// nixEnviron is a minimal environment for Nix commands of a machine whose
// HOME and nix.conf directory are given, so nothing reaches /root or /etc/nix.
func nixEnviron(home, confDir string, extra ...string) []string {
	return append([]string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + home,
		"XDG_CACHE_HOME=" + filepath.Join(home, ".cache"),
		"NIX_CONF_DIR=" + confDir,
	}, extra...)
}

// RunTests is TestMain's body for packages that use the harness: it starts
// an Env, sets *env, runs setup (if any) and the tests, and cleans up.
func RunTests(m interface{ Run() int }, env **Env, setup ...func(*Env) error) int {
	e, err := Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, "harness:", err)
		return 1
	}
	defer e.Close()
	*env = e
	for _, f := range setup {
		if err := f(e); err != nil {
			fmt.Fprintln(os.Stderr, "harness:", err)
			return 1
		}
	}
	return m.Run()
}

// Result is a finished command.
type Result struct {
	Stdout, Stderr string
	Err            error
}

// Run runs a command with env, bounded by CommandTimeout.
func Run(env []string, name string, args ...string) Result {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	// Kill the whole group on timeout: ssh and Nix spawn helpers.
	cmd.SysProcAttr = ownGroup()
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		err = fmt.Errorf("%s timed out after %s: %w", name, CommandTimeout, err)
	}
	if err != nil {
		err = fmt.Errorf("%s %s: %w\nstderr:\n%s", name, strings.Join(args, " "), err, errb.String())
	}
	return Result{out.String(), errb.String(), err}
}

// Nonce returns a random string; built paths include one so that every test
// gets paths no other test (or earlier run) has touched.
func Nonce() string {
	var b [8]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// PathInfo is what the Env's daemon knows of path, or nil when the path is
// not valid on the server.
func (e *Env) PathInfo(path string) (*daemon.PathInfo, error) {
	ctx, cancel := context.WithTimeout(context.Background(), CommandTimeout)
	defer cancel()
	c, err := daemon.Dial(ctx, e.Socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	info, err := c.QueryPathInfo(path)
	if errors.Is(err, daemon.ErrNotValid) {
		return nil, nil
	}
	return info, err
}
