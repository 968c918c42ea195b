package sshconf

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/nixcache/nixcache/internal/atomicfile"
	"github.com/nixcache/nixcache/internal/nixkey"
)

// Cache is one cache the daemon substitutes from, as recorded in the
// managed configuration: enough for doctor to check it without flags.
type Cache struct {
	// URL is the cache as URL.Substituter records it: for ssh:// and
	// ssh-ng:// the substituter as nix.conf names it, with no port (Nix
	// 2.8 cannot parse one; the Match block supplies it); for nixcache://
	// the account and the local substituter's port.
	URL    string
	Target Target
	// PublicKey is the cache's Nix signing key, "name:base64".
	PublicKey string
}

// NixSubstituter is the substituter nix.conf names for the cache.
func (c Cache) NixSubstituter() string {
	u, err := ParseSubstituter(c.URL)
	if err != nil {
		return c.URL
	}
	return u.NixSubstituter()
}

// Channel says the cache is reached through the local substituter.
func (c Cache) Channel() bool { return strings.HasPrefix(c.URL, "nixcache://") }

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

// RenderManaged is the managed configuration for caches, in a stable
// order. It refuses a cache whose record ReadManaged would not read back as
// it is, so that join never writes a file it cannot read again.
func (d Dir) RenderManaged(caches []Cache) ([]byte, error) {
	if strings.ContainsFunc(string(d), func(r rune) bool { return r < ' ' || r == 0x7f || strings.ContainsRune(sshSpecial, r) }) {
		return nil, fmt.Errorf("ssh directory %q: ssh would read its name otherwise; choose one without control characters or any of %s", string(d), sshSpecial)
	}
	caches = slices.Clone(caches)
	slices.SortFunc(caches, func(a, b Cache) int { return strings.Compare(a.URL, b.URL) })
	var b strings.Builder
	b.WriteString(managedHeader)
	for _, c := range caches {
		if err := c.check(); err != nil {
			return nil, fmt.Errorf("cache %s: %w", c.URL, err)
		}
		t := c.Target
		fmt.Fprintf(&b, "\n# cache %s port %d key %s\n", c.URL, t.Port, c.PublicKey)
		// originalhost and user: exactly the name and account Nix passes
		// to ssh, so root's other ssh use of the host is left alone.
		fmt.Fprintf(&b, "Match originalhost %s user %s\n", t.Host, t.User)
		fmt.Fprintf(&b, "  Port %d\n", t.Port)
		fmt.Fprintf(&b, "  IdentityFile %s\n", pathWord(d.KeyFile()))
		b.WriteString("  IdentitiesOnly yes\n")
		fmt.Fprintf(&b, "  UserKnownHostsFile %s\n", pathWord(d.KnownHosts()))
		b.WriteString("  GlobalKnownHostsFile /dev/null\n")
		b.WriteString("  StrictHostKeyChecking yes\n")
		b.WriteString("  UpdateHostKeys no\n")
		b.WriteString("  CheckHostIP no\n")
		for _, o := range tuning {
			b.WriteString("  " + o + "\n")
		}
	}
	return []byte(b.String()), nil
}

// sshSpecial are the characters ssh reads in a file name as something
// else: quotes and escapes, "#" comments, "%" tokens, "~" home directories,
// and Include's glob patterns.
const sshSpecial = `"'\#%~*?[`

// pathWord is path, free of sshSpecial and control characters, as one word
// of ssh's configuration, which splits words at spaces.
func pathWord(path string) string {
	if strings.Contains(path, " ") {
		return `"` + path + `"`
	}
	return path
}

// check refuses a cache whose record would not read back as it is: each
// part must be what ReadManaged accepts, written the one way it writes it.
// The errors quote nothing: ReadManaged reports them for lines it refused.
func (c Cache) check() error {
	u, err := ParseSubstituter(c.URL)
	if err != nil || u.Substituter() != c.URL || u.Target.User != c.Target.User || u.Target.Host != c.Target.Host {
		return errors.New("not a cache address as nixcache writes it")
	}
	if c.Target.Port < 1 || c.Target.Port > 65535 {
		return errors.New("the port is not between 1 and 65535")
	}
	k, err := nixkey.ParsePublicKey(c.PublicKey)
	if err != nil || k.String() != c.PublicKey || strings.ContainsFunc(c.PublicKey, notWord) {
		return errors.New("not a Nix public key written as one word of printable ASCII")
	}
	return nil
}

// notWord is what may not appear in a field of a cache record, which is
// printable ASCII; fields are split at spaces and tabs only.
func notWord(r rune) bool { return r <= ' ' || r > '~' }

// maxManaged caps the managed configuration: a few hundred bytes a cache.
const maxManaged = 1 << 20

// ReadManaged returns the caches recorded in the managed configuration;
// none when it does not exist.
func (d Dir) ReadManaged() ([]Cache, error) {
	data, _, err := atomicfile.ReadCapped(d.Managed(), maxManaged, "nixcache's ssh configuration")
	if IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	return parseManaged(d.Managed(), data)
}

// parseManaged reads the records RenderManaged writes and refuses anything
// it would not have written. Join rewrites the file from what it reads, so
// the way out of a file it cannot read is to move it away, not to join
// again.
func parseManaged(file string, data []byte) ([]Cache, error) {
	var caches []Cache
	for i, line := range lines(data) {
		bad := func(why string) error {
			return fmt.Errorf("%q line %d: %s; nixcache writes this file whole and cannot rewrite it: move it away and join each cache again", file, i+1, why)
		}
		if strings.ContainsFunc(line, func(r rune) bool { return r != ' ' && r != '\t' && notWord(r) }) {
			return nil, bad("a character other than printable ASCII, a space or a tab")
		}
		f := strings.FieldsFunc(line, func(r rune) bool { return r == ' ' || r == '\t' })
		if len(f) < 2 || f[0] != "#" || f[1] != "cache" {
			continue
		}
		if len(f) != 7 || f[3] != "port" || f[5] != "key" {
			return nil, bad("not a cache record as nixcache writes it")
		}
		port, err := strconv.Atoi(f[4])
		if err != nil || strconv.Itoa(port) != f[4] {
			return nil, bad("the port is not a number")
		}
		c := Cache{URL: f[2], PublicKey: f[6]}
		if u, err := ParseSubstituter(c.URL); err == nil {
			c.Target = u.Target
		}
		c.Target.Port = port
		if err := c.check(); err != nil {
			return nil, bad(err.Error())
		}
		caches = append(caches, c)
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
	head := includeComment + "\nInclude " + pathWord(d.Managed()) + "\n"
	if len(existing) > 0 {
		head += "\n"
	}
	return append([]byte(head), existing...)
}

// OtherIdentities are the key files ssh would offer the cache account
// besides the daemon's key, as ssh -G resolves root's configuration. No
// ssh_config setting in the managed block can stop them: IdentityFile
// accumulates over every block that matches, later Host * blocks included;
// IdentitiesOnly limits only the agent's keys; "IdentityFile none" removes
// nothing. ssh offers them after the daemon's key is refused, so the cache
// then sees root's other public keys.
func (d Dir) OtherIdentities(ctx context.Context, t Target) ([]string, error) {
	out, err := exec.CommandContext(ctx, "ssh", "-G", "-F", d.UserConfig(), t.User+"@"+t.Host).Output()
	if err != nil {
		return nil, fmt.Errorf("ssh -G %s@%s: %w", t.User, t.Host, err)
	}
	var others []string
	for _, line := range lines(out) {
		if file, ok := strings.CutPrefix(line, "identityfile "); ok && file != d.KeyFile() {
			others = append(others, file)
		}
	}
	return others, nil
}
