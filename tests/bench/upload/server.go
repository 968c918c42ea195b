package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/nixcache/nixcache/internal/atomicfile"
	"github.com/nixcache/nixcache/tests/bench/benchkit"
	"github.com/nixcache/nixcache/tests/harness"
)

// cache is one run's cache server: a fresh chroot store of its own with a
// nix-daemon that trusts the cache's key (so that the daemon accepts what
// the cache signed from an untrusted importer, as on a real server), and
// sshd in front of it. The store is never the machine's, where the closure
// already is: every path really travels and is imported.
type cache struct {
	// Dir is under the harness's directory in /run (root-owned, 0755, as
	// sshd's StrictModes wants above authorized_keys).
	Dir string
	// StoreRoot is the chroot store's root; big, so under -state.
	StoreRoot string
	ConfDir   string
	Home      string
	Socket    string
	Port      int
	HostKey   string
	// Registry is the clients registry nixcache serve and the publisher
	// read (nixcache servers only).
	Registry string
	// PublisherSocket is where serve reaches the publisher.
	PublisherSocket string

	daemon, sshd, publisher *benchkit.Service
}

// cacheKind is what sshd runs for a login.
type cacheKind int

const (
	// rootShell: the seed's server, where the admin logs in as root and
	// nix-copy-closure runs `nix-store --serve --write`.
	rootShell cacheKind = iota
	// nixcacheServe: `nixcache serve` as the forced command, relaying
	// uploads to `nixcache publisher`, which holds the cache's key.
	nixcacheServe
)

// startCache starts a cache of kind in a fresh directory under env.Dir,
// its store under work.
func startCache(env *harness.Env, nixcache, work string, kind cacheKind, secretKey, publicKey string) (c *cache, err error) {
	dir, err := os.MkdirTemp(env.Dir, "upload-cache-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	storeRoot, err := os.MkdirTemp(work, "cache-store-")
	if err != nil {
		return nil, err
	}
	c = &cache{
		Dir: dir, StoreRoot: storeRoot, ConfDir: filepath.Join(dir, "nix"), Home: filepath.Join(dir, "home"),
		Socket: filepath.Join(dir, "daemon.socket"), Registry: filepath.Join(dir, "clients.toml"),
		PublisherSocket: filepath.Join(dir, "publisher.sock"),
	}
	defer func() {
		if err != nil {
			c.Close()
			c = nil
		}
	}()
	for _, d := range []string{c.ConfDir, c.Home, filepath.Join(dir, "authorized_keys")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	// The daemon trusts the cache's key: an input-addressed path signed by
	// it is accepted from a user the daemon does not trust.
	conf := fmt.Sprintf("sandbox = false\nexperimental-features = nix-command\nbuild-users-group = nixbld\ntrusted-public-keys = %s\n", publicKey)
	if err := os.WriteFile(filepath.Join(c.ConfDir, "nix.conf"), []byte(conf), 0o644); err != nil {
		return nil, err
	}
	if c.daemon, err = benchkit.StartDaemon(env, c.baseEnviron(), c.Socket, "--option", "store", "local?root="+storeRoot); err != nil {
		return nil, err
	}
	if kind == nixcacheServe {
		if err := c.startPublisher(nixcache, secretKey); err != nil {
			return nil, err
		}
	}
	if err := c.startSSHD(env, nixcache, kind); err != nil {
		return nil, err
	}
	return c, nil
}

func (c *cache) baseEnviron() []string {
	return []string{
		"PATH=" + os.Getenv("PATH"), "HOME=" + c.Home, "XDG_CACHE_HOME=" + filepath.Join(c.Home, ".cache"),
		"NIX_CONF_DIR=" + c.ConfDir,
	}
}

// Environ is the environment of commands run on the server against its
// store (through its daemon).
func (c *cache) Environ() []string {
	return append(c.baseEnviron(), "NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH="+c.Socket)
}

// startPublisher starts `nixcache publisher` with the cache's key.
func (c *cache) startPublisher(nixcache, secretKey string) error {
	cmd := exec.Command(nixcache, "publisher", "--listen", c.PublisherSocket,
		"--registry", c.Registry, "--secret-key-file", secretKey,
		"--roots", filepath.Join(c.Dir, "roots"), "--audit-log", filepath.Join(c.Dir, "audit.log"))
	cmd.Env = c.Environ()
	var err error
	if c.publisher, err = benchkit.StartService("publisher", filepath.Join(c.Dir, "publisher.log"), cmd); err != nil {
		return err
	}
	return benchkit.WaitSocket(c.publisher, c.PublisherSocket)
}

// startSSHD starts sshd on a free loopback port. Root logs in: for the
// seed with a shell, as the seed's admin did; for nixcache into the forced
// `nixcache serve` (here as root rather than an unprivileged cache account:
// the harness's account trick is its own, and the uid changes nothing the
// benchmark measures; the publisher accepts root as it accepts the cache
// account).
func (c *cache) startSSHD(env *harness.Env, nixcache string, kind cacheKind) error {
	hostKey := filepath.Join(c.Dir, "ssh_host_ed25519_key")
	if r := harness.Run(env.Environ(), "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", hostKey); r.Err != nil {
		return r.Err
	}
	pub, err := os.ReadFile(hostKey + ".pub")
	if err != nil {
		return err
	}
	c.HostKey = strings.Join(strings.Fields(string(pub))[:2], " ")
	addr, err := benchkit.FreeAddr()
	if err != nil {
		return err
	}
	fmt.Sscanf(addr[strings.LastIndexByte(addr, ':')+1:], "%d", &c.Port)
	// SetEnv overrides sshd's defaults: the session's Nix reaches this
	// cache's daemon and reads its nix.conf, and HOME is private.
	setEnv := strings.Join(c.Environ()[1:], " ")
	force := ""
	if kind == nixcacheServe {
		nixStore, err := exec.LookPath("nix-store")
		if err != nil {
			return err
		}
		force = fmt.Sprintf("ExposeAuthInfo yes\nForceCommand %s serve --registry %s --nix-store %s --publisher %s\n",
			nixcache, c.Registry, nixStore, c.PublisherSocket)
	}
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile none
AuthorizedKeysFile %s/authorized_keys/%%u
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
AllowUsers root
LogLevel VERBOSE
SetEnv %s
%s`, c.Port, hostKey, c.Dir, setEnv, force)
	cfgPath := filepath.Join(c.Dir, "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		return err
	}
	args := []string{"-D", "-e", "-f", cfgPath}
	if exec.Command(sshd, "-t", "-f", cfgPath, "-o", "PerSourcePenalties=no").Run() == nil {
		// OpenSSH 9.8 and later would penalise the bench's own logins.
		args = append(args, "-o", "PerSourcePenalties=no")
	}
	cmd := exec.Command(sshd, args...)
	cmd.Env = env.Environ()
	if c.sshd, err = benchkit.StartService("sshd", filepath.Join(c.Dir, "sshd.log"), cmd); err != nil {
		return err
	}
	return benchkit.WaitSSH(c.sshd, c.Addr())
}

// Addr is sshd's address.
func (c *cache) Addr() string { return fmt.Sprintf("127.0.0.1:%d", c.Port) }

// Authorize replaces root's authorized keys on the cache.
func (c *cache) Authorize(lines ...string) error {
	return atomicfile.Write(filepath.Join(c.Dir, "authorized_keys", "root"), []byte(strings.Join(lines, "\n")+"\n"), 0o644)
}

// Close stops everything and removes the store.
func (c *cache) Close() {
	c.sshd.Stop()
	c.publisher.Stop()
	c.daemon.Stop()
	benchkit.RemoveAll(c.StoreRoot)
	os.RemoveAll(c.Dir)
}
