package sshconf

import (
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
)

// Cache is one cache the daemon substitutes from, as recorded in the
// managed configuration: enough for doctor to check it without flags.
type Cache struct {
	// URL is the substituter as nix.conf names it: no port (Nix 2.8 cannot
	// parse one; the Match block supplies it).
	URL    string
	Target Target
	// PublicKey is the cache's Nix signing key, "name:base64".
	PublicKey string
}

// tuning is ssh's behaviour towards every cache: never prompt, give up on
// an unreachable cache quickly (a build must not hang on it), and notice a
// dead connection. The values and their reasons are in the README.
var tuning = []string{
	"BatchMode yes",
	"ConnectTimeout 5",
	"ServerAliveInterval 5",
	"ServerAliveCountMax 3",
	// A ControlMaster of root's own would carry the daemon's sessions
	// over a connection made with other settings; Nix runs its own master
	// when it wants one.
	"ControlMaster no",
}

const managedHeader = `# Managed by 'nixcache client join': rewritten on every join, do not edit.
# The Nix daemon's ssh settings for its caches; see 'nixcache client doctor'.
`

// RenderManaged is the managed configuration for caches, in a stable order.
func (d Dir) RenderManaged(caches []Cache) []byte {
	caches = slices.Clone(caches)
	slices.SortFunc(caches, func(a, b Cache) int { return strings.Compare(a.URL, b.URL) })
	var b strings.Builder
	b.WriteString(managedHeader)
	for _, c := range caches {
		t := c.Target
		fmt.Fprintf(&b, "\n# cache %s port %d key %s\n", c.URL, t.Port, c.PublicKey)
		// originalhost and user: exactly the name and account Nix passes
		// to ssh, so root's other ssh use of the host is left alone.
		fmt.Fprintf(&b, "Match originalhost %s user %s\n", t.Host, t.User)
		fmt.Fprintf(&b, "  Port %d\n", t.Port)
		fmt.Fprintf(&b, "  IdentityFile %s\n", quote(d.KeyFile()))
		b.WriteString("  IdentitiesOnly yes\n")
		fmt.Fprintf(&b, "  UserKnownHostsFile %s\n", quote(d.KnownHosts()))
		b.WriteString("  GlobalKnownHostsFile /dev/null\n")
		b.WriteString("  StrictHostKeyChecking yes\n")
		b.WriteString("  UpdateHostKeys no\n")
		b.WriteString("  CheckHostIP no\n")
		for _, o := range tuning {
			b.WriteString("  " + o + "\n")
		}
	}
	return []byte(b.String())
}

func quote(path string) string {
	if strings.ContainsAny(path, " \t\"") {
		return strconv.Quote(path)
	}
	return path
}

// ReadManaged returns the caches recorded in the managed configuration;
// none when it does not exist.
func (d Dir) ReadManaged() ([]Cache, error) {
	data, err := os.ReadFile(d.Managed())
	if IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var caches []Cache
	for i, line := range lines(data) {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "#" || f[1] != "cache" {
			continue
		}
		if len(f) != 7 || f[3] != "port" || f[5] != "key" {
			return nil, fmt.Errorf("%q line %d: not a cache record written by nixcache; run 'nixcache client join' again", d.Managed(), i+1)
		}
		port, err := strconv.Atoi(f[4])
		if err != nil {
			return nil, fmt.Errorf("%q line %d: bad port", d.Managed(), i+1)
		}
		u, err := ParseSubstituter(f[2])
		if err != nil {
			return nil, fmt.Errorf("%q line %d: %v", d.Managed(), i+1, err)
		}
		u.Target.Port = port
		caches = append(caches, Cache{URL: f[2], Target: u.Target, PublicKey: f[6]})
	}
	return caches, nil
}

// WithCache returns caches with c added, replacing any for the same
// account on the same host.
func WithCache(caches []Cache, c Cache) []Cache {
	out := slices.DeleteFunc(slices.Clone(caches), func(o Cache) bool {
		return o.Target.User == c.Target.User && o.Target.Host == c.Target.Host
	})
	return append(out, c)
}

const includeComment = "# Added by 'nixcache client join': the Nix daemon's settings for its caches."

// EnsureInclude returns root's ssh config with an Include of the managed
// file at the top, where it wins over any later Host block (ssh takes the
// first value it finds). An Include already among the global lines is kept
// as it is.
func (d Dir) EnsureInclude(existing []byte) []byte {
	for _, line := range lines(existing) {
		f := strings.Fields(strings.Replace(line, "=", " ", 1))
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		kw := strings.ToLower(f[0])
		if kw == "host" || kw == "match" {
			break
		}
		if kw == "include" && slices.Contains(f[1:], d.Managed()) {
			return existing
		}
	}
	head := includeComment + "\nInclude " + quote(d.Managed()) + "\n"
	if len(existing) > 0 {
		head += "\n"
	}
	return append([]byte(head), existing...)
}
