package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/nixcache/nixcache/tests/harness"
)

// cacheAlias is the cache's name in the client's ssh config.
const cacheAlias = "nixcache-bench-cache"

// client is the uploading machine's ssh identity and configuration; its
// store is the machine's (the harness's daemon), where the closure is.
type client struct {
	key, publicKey, sshConfig string
}

// newClient makes a key in dir and an ssh config that reaches the cache
// as root through the link proxy's port, pinning the cache's host key.
func newClient(env *harness.Env, dir string, c *cache, port int) (*client, error) {
	cl := &client{key: filepath.Join(dir, "id_ed25519"), sshConfig: filepath.Join(dir, "ssh_config")}
	if r := harness.Run(env.Environ(), "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench@"+filepath.Base(dir), "-f", cl.key); r.Err != nil {
		return nil, r.Err
	}
	pub, err := os.ReadFile(cl.key + ".pub")
	if err != nil {
		return nil, err
	}
	cl.publicKey = strings.TrimSpace(string(pub))
	known := filepath.Join(dir, "known_hosts")
	if err := os.WriteFile(known, []byte(cacheAlias+" "+c.HostKey+"\n"), 0o644); err != nil {
		return nil, err
	}
	cfg := fmt.Sprintf(`Host %s
  HostName 127.0.0.1
  Port %d
  User root
  HostKeyAlias %s
  IdentityFile %s
  IdentitiesOnly yes
  UserKnownHostsFile %s
  GlobalKnownHostsFile /dev/null
  StrictHostKeyChecking yes
  BatchMode yes
  ConnectTimeout 5
`, cacheAlias, port, cacheAlias, cl.key, known)
	return cl, os.WriteFile(cl.sshConfig, []byte(cfg), 0o600)
}

// registerPush adds the client to the cache's registry with role push and
// installs the registry's authorized_keys for root, as the cache's admin
// would.
func registerPush(env *harness.Env, nixcache string, c *cache, name, publicKey string) error {
	if r := harness.Run(env.Environ(), nixcache, "clients", "add", "--registry", c.Registry, "--role", "push", "--key", publicKey, name); r.Err != nil {
		return r.Err
	}
	r := harness.Run(env.Environ(), nixcache, "clients", "authorized-keys", "--registry", c.Registry)
	if r.Err != nil {
		return r.Err
	}
	return c.Authorize(strings.Split(strings.TrimSuffix(r.Stdout, "\n"), "\n")...)
}
