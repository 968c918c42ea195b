// Package sshconf owns what a client machine's root account needs to reach a
// cache over SSH without ever prompting: a dedicated key for the Nix daemon,
// the cache's pinned host key, and a managed block of ssh configuration that
// ties the two to the cache's host, user and port.
//
// Everything lives in root's ssh directory (/root/.ssh, /var/root/.ssh on
// macOS), which is where the daemon's ssh looks, whatever the Nix version:
//
//	nixcache_ed25519       the daemon's key (0600) and nixcache_ed25519.pub
//	nixcache_known_hosts   the pinned host keys, one line per cache
//	nixcache_config        one Match block per cache, rewritten by join
//	config                 gets one "Include .../nixcache_config" line at the top
//
// A Match block rather than store URL parameters: Nix 2.8 cannot parse a port
// in an ssh:// URL, and ssh-key= / base64-ssh-public-host-key= differ between
// versions, while ssh's own configuration works for every Nix and for every
// ssh the user runs by hand to debug.
package sshconf

import (
	"path/filepath"
	"runtime"
)

// Dir is root's ssh directory and the files nixcache keeps in it.
type Dir string

// DefaultDir is the ssh directory of the account the Nix daemon runs as.
func DefaultDir() Dir {
	if runtime.GOOS == "darwin" {
		return "/var/root/.ssh"
	}
	return "/root/.ssh"
}

func (d Dir) path(name string) string { return filepath.Join(string(d), name) }

// KeyFile is the daemon's private key; its public half is KeyFile()+".pub".
func (d Dir) KeyFile() string { return d.path("nixcache_ed25519") }

// KnownHosts is the file of pinned cache host keys.
func (d Dir) KnownHosts() string { return d.path("nixcache_known_hosts") }

// Managed is the ssh configuration nixcache writes whole.
func (d Dir) Managed() string { return d.path("nixcache_config") }

// UserConfig is root's own ssh configuration, which includes Managed.
func (d Dir) UserConfig() string { return d.path("config") }
