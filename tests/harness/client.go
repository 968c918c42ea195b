package harness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// HostAlias is the name clients use for the cache; their ssh config maps it
// to the loopback port and pins the host key.
const HostAlias = "nixcache-test-cache"

// Client is a machine that substitutes from a cache: a fresh chroot store
// (`--store DIR`), its own nix.conf, and an SSH key of its own.
type Client struct {
	Dir string
	// Store is the root of the client's store.
	Store string
	// ConfDir is NIX_CONF_DIR for the client's Nix commands.
	ConfDir string
	// Key is the client's SSH private key; PublicKey its authorized_keys line.
	Key, PublicKey string

	env    *Env
	server *Server
}

// NewClient makes a client of server in dir (a fresh directory). The client
// pins the server's host key; it is not authorized on the server until the
// test says so.
func (e *Env) NewClient(dir string, server *Server) (*Client, error) {
	c := &Client{
		Dir:     dir,
		Store:   filepath.Join(dir, "store"),
		ConfDir: filepath.Join(dir, "etc-nix"),
		Key:     filepath.Join(dir, "id_ed25519"),
		env:     e,
		server:  server,
	}
	if err := os.MkdirAll(c.ConfDir, 0o755); err != nil {
		return nil, err
	}
	if r := Run(e.Environ(), "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "client@"+filepath.Base(dir), "-f", c.Key); r.Err != nil {
		return nil, r.Err
	}
	pub, err := os.ReadFile(c.Key + ".pub")
	if err != nil {
		return nil, err
	}
	c.PublicKey = strings.TrimSpace(string(pub))
	known := fmt.Sprintf("%s %s\n", HostAlias, server.HostKey)
	if err := os.WriteFile(filepath.Join(dir, "known_hosts"), []byte(known), 0o644); err != nil {
		return nil, err
	}
	// What `nixcache client join` will manage in root's ssh config: the
	// port, the key, the pinned host key, and no prompt ever.
	sshConfig := fmt.Sprintf(`Host %s
  HostName 127.0.0.1
  Port %d
  User %s
  HostKeyAlias %s
  IdentityFile %s
  IdentitiesOnly yes
  UserKnownHostsFile %s
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
`, HostAlias, server.Port, CacheUser, HostAlias, c.Key, filepath.Join(dir, "known_hosts"))
	if err := os.WriteFile(c.SSHConfig(), []byte(sshConfig), 0o600); err != nil {
		return nil, err
	}
	return c, nil
}

// SSHConfig is the ssh config file the client's Nix commands use.
func (c *Client) SSHConfig() string { return filepath.Join(c.Dir, "ssh_config") }

// SubstituterURL is the cache as the client's nix.conf names it.
func (c *Client) SubstituterURL() string {
	return fmt.Sprintf("%s://%s@%s", c.server.Protocol, CacheUser, HostAlias)
}

// UseCache writes the client's nix.conf with only the cache as substituter
// and only the given public keys trusted, the way a client is set up.
func (c *Client) UseCache(trustedKeys ...string) error {
	conf := fmt.Sprintf("substituters = %s\ntrusted-public-keys = %s\n",
		c.SubstituterURL(), strings.Join(trustedKeys, " "))
	return os.WriteFile(filepath.Join(c.ConfDir, "nix.conf"), []byte(conf), 0o644)
}

// Environ is the environment of the client's Nix commands: its own
// nix.conf, and ssh told to use the client's ssh config (as root's
// ~/.ssh/config would be on a real client).
func (c *Client) Environ() []string {
	return nixEnviron(c.Dir, c.ConfDir, "NIX_SSHOPTS=-F "+c.SSHConfig())
}

// Nix runs a Nix command against the client's store. As root, a Nix command
// runs ssh for the store's substituter itself, so it starts through ownroot
// as the daemons do.
func (c *Client) Nix(name string, args ...string) Result {
	return Run(c.Environ(), c.env.ownroot, append([]string{name, "--store", c.Store}, args...)...)
}

// Substitute realises paths in the client's store, which can only succeed
// by substitution: output paths without their derivations cannot be built.
func (c *Client) Substitute(paths ...string) Result {
	return c.Nix("nix-store", append([]string{"--realise"}, paths...)...)
}

// Has reports whether path is valid in the client's store.
func (c *Client) Has(path string) bool {
	return c.Nix("nix-store", "--check-validity", path).Err == nil
}

// SSH runs ssh to the cache account with the client's key and arguments.
func (c *Client) SSH(args ...string) Result {
	return Run(c.Environ(), "ssh", append([]string{"-F", c.SSHConfig(), HostAlias}, args...)...)
}

// SubstituterCommand is the command `nixcache client join --cache
// nixcache://… --service-manager none` prints for the admin to keep running
// (indented, on a line of its own in join's standard error), or "".
func SubstituterCommand(joinStderr string) string {
	for _, line := range strings.Split(joinStderr, "\n") {
		if strings.HasPrefix(line, "    ") && strings.Contains(line, " client substituter ") {
			return strings.TrimSpace(line)
		}
	}
	return ""
}
