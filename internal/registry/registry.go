// Package registry owns the clients registry: the TOML file that is a cache
// server's single source of truth for which SSH keys may read the cache,
// and which of them may also push to it. It parses and writes the file
// (deterministically, so that it diffs well and an add followed by a remove
// restores it byte for byte), edits it under a lock, and renders it as an
// OpenSSH authorized_keys file.
//
// The file:
//
//	# nixcache clients registry: edit with `nixcache clients add` and `nixcache clients remove`.
//	version = 2
//
//	[clients.build-01]
//	key = "ssh-ed25519 AAAA..."
//	role = "push"
//	comment = "CI runner"
//
//	[clients.laptop]
//	key = "ssh-ed25519 AAAA..."
//
// One table per client, named by the client, sorted by name; key is
// "TYPE BASE64" (a key's own comment goes to comment, never into key).
// Unknown fields are errors, so a typo cannot silently lose a setting.
//
// Every client has a role, pull (the default) or push (which implies pull).
// Version 1, the format before roles, has no role field: every client in it
// is pull. Version 2 adds role = "pull" or "push". A file is written as
// version 1 while every client is pull, byte for byte as before roles, and
// as version 2 once a client is push, writing only role = "push": a
// nixcache from before roles then refuses the file ("newer than this
// nixcache understands") instead of reading it, and dropping the roles on
// its next write.
package registry

import (
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	"golang.org/x/crypto/ssh"
)

// Version is the newest file format this package reads and writes; it
// reads every version from 1.
const Version = 2

// The versions before and with roles. A registry without push clients is
// still written as version 1, which every nixcache reads.
const (
	versionNoRoles = 1
	versionRoles   = 2
)

// Header is the first line of every registry nixcache writes.
const Header = "# nixcache clients registry: edit with `nixcache clients add` and `nixcache clients remove`."

// Role is what a client may do with the cache.
type Role string

const (
	// Pull reads: narinfos, NARs, which paths the cache lacks. Every
	// client may pull; it is the default, and what every client in a
	// version 1 file is.
	Pull Role = "pull"
	// Push also uploads paths, which the cache signs and publishes.
	Push Role = "push"
)

// ParseRole checks a role's name.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case Pull, Push:
		return r, nil
	}
	return "", fmt.Errorf("unknown role %q: use pull or push", s)
}

// Allows says whether a client with role r may do what role op needs: push
// implies pull, and anything that is not push (even an unset or unknown
// role) may only pull.
func (r Role) Allows(op Role) bool { return op == Pull || r == Push }

// Client is one registered machine.
type Client struct {
	Name    string
	Key     ssh.PublicKey
	Comment string
	Role    Role
}

// KeyText is the client's key as "TYPE BASE64".
func (c Client) KeyText() string { return keyText(c.Key) }

// Fingerprint is the key's OpenSSH SHA256 fingerprint, as ssh-keygen -l and
// sshd's log print it.
func (c Client) Fingerprint() string { return ssh.FingerprintSHA256(c.Key) }

// Registry is the set of clients, kept sorted by name.
type Registry struct {
	clients []Client
}

// Clients returns the clients sorted by name.
func (r *Registry) Clients() []Client { return slices.Clone(r.clients) }

// Errors callers may want to tell apart.
var (
	ErrExists       = errors.New("already registered")
	ErrNotFound     = errors.New("no client named")
	ErrDuplicateKey = errors.New("key is already registered")
)

// Add registers a client with a role. The name must be new and the key
// must not be registered under another name (the key itself is compared,
// not its comment): one machine, one name, so that removing a name really
// revokes its access.
func (r *Registry) Add(name string, key ssh.PublicKey, comment string, role Role) error {
	if err := ValidateName(name); err != nil {
		return err
	}
	if err := ValidateComment(comment); err != nil {
		return err
	}
	if _, err := ParseRole(string(role)); err != nil {
		return err
	}
	if err := checkKeyType(key); err != nil {
		return err
	}
	i, found := r.find(name)
	if found {
		return fmt.Errorf("client %q is %w", name, ErrExists)
	}
	if other, ok := r.byKey(key); ok {
		return fmt.Errorf("this %w as %q", ErrDuplicateKey, other.Name)
	}
	r.clients = slices.Insert(r.clients, i, Client{Name: name, Key: key, Comment: comment, Role: role})
	return nil
}

// SetRole changes a client's role.
func (r *Registry) SetRole(name string, role Role) error {
	if _, err := ParseRole(string(role)); err != nil {
		return err
	}
	i, found := r.find(name)
	if !found {
		return fmt.Errorf("%w %q", ErrNotFound, name)
	}
	r.clients[i].Role = role
	return nil
}

// Remove unregisters a client.
func (r *Registry) Remove(name string) error {
	i, found := r.find(name)
	if !found {
		return fmt.Errorf("%w %q", ErrNotFound, name)
	}
	r.clients = slices.Delete(r.clients, i, i+1)
	return nil
}

func (r *Registry) find(name string) (int, bool) {
	return slices.BinarySearchFunc(r.clients, name, func(c Client, name string) int { return strings.Compare(c.Name, name) })
}

func (r *Registry) byKey(key ssh.PublicKey) (Client, bool) {
	want := string(key.Marshal())
	for _, c := range r.clients {
		if string(c.Key.Marshal()) == want {
			return c, true
		}
	}
	return Client{}, false
}

// Marshal renders the registry. The bytes depend only on its content:
// clients sorted by name, fields in a fixed order, no timestamps. Pull is
// never written, and the file is version 1 unless a client is push, so a
// registry without push clients is what nixcache wrote before roles.
func (r *Registry) Marshal() []byte {
	version := versionNoRoles
	if slices.ContainsFunc(r.clients, func(c Client) bool { return c.Role == Push }) {
		version = versionRoles
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nversion = %d\n", Header, version)
	for _, c := range r.clients {
		fmt.Fprintf(&b, "\n[clients.%s]\nkey = %s\n", tableKey(c.Name), quote(c.KeyText()))
		if c.Role == Push {
			fmt.Fprintf(&b, "role = %s\n", quote(string(Push)))
		}
		if c.Comment != "" {
			fmt.Fprintf(&b, "comment = %s\n", quote(c.Comment))
		}
	}
	return []byte(b.String())
}

// tableKey writes a name as a TOML key: bare when it can be (letters,
// digits, '_' and '-'), quoted when it has a dot.
func tableKey(name string) string {
	if strings.Contains(name, ".") {
		return quote(name)
	}
	return name
}

// quote writes a TOML basic string. Comments are checked to hold no control
// characters, but quoting stays correct for any input.
func quote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r == 0x7f:
			fmt.Fprintf(&b, "\\u%04X", r)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// file is the TOML layout. Adding a field here is a format change: see the
// package comment on versions.
type file struct {
	Version int                   `toml:"version"`
	Clients map[string]fileClient `toml:"clients"`
}

type fileClient struct {
	Key     string `toml:"key"`
	Comment string `toml:"comment"`
	Role    string `toml:"role"` // version 2; empty is pull
}

// Parse reads a registry. Every error names the line it is about. It reads
// TOML in the registry's shape only (see scan), in time and memory linear in
// the file's size.
func Parse(data []byte) (*Registry, error) {
	text := string(data)
	lines, err := scan(text)
	if err != nil {
		return nil, err
	}
	var f file
	if _, err := toml.Decode(text, &f); err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("line %d: %s", errorLine(text, pe.Position), pe.Message)
		}
		// Type mismatches come as "toml: line N (last key ...): ...".
		return nil, errors.New(strings.TrimPrefix(err.Error(), "toml: "))
	}
	if lines.version == 0 {
		return nil, errors.New(`no "version = 1" line: is this a nixcache clients registry?`)
	}
	if !supportedVersion(f.Version) {
		return nil, versionError(lines.version, f.Version)
	}
	names := make([]string, 0, len(f.Clients))
	for name := range f.Clients {
		names = append(names, name)
	}
	// Check in file order, so that the first problem in the file is the
	// one reported.
	at := func(name string) clientLines {
		if c := lines.clients[name]; c != nil {
			return *c
		}
		return clientLines{}
	}
	slices.SortFunc(names, func(a, b string) int { return at(a).table - at(b).table })
	r := &Registry{clients: make([]Client, 0, len(names))}
	byKey := make(map[string]string, len(names))
	for _, name := range names {
		fc, line := f.Clients[name], at(name)
		if err := ValidateName(name); err != nil {
			return nil, fmt.Errorf("line %d: %w", line.table, err)
		}
		if line.key == 0 {
			return nil, fmt.Errorf("line %d: client %q has no key", line.table, name)
		}
		key, _, err := ParseKey(fc.Key)
		if err != nil {
			return nil, fmt.Errorf("line %d: client %q: %w", line.key, name, err)
		}
		if other, ok := byKey[string(key.Marshal())]; ok {
			return nil, fmt.Errorf("line %d: client %q: this %w as %q", line.key, name, ErrDuplicateKey, other)
		}
		if err := ValidateComment(fc.Comment); err != nil {
			return nil, fmt.Errorf("line %d: client %q: %w", line.comment, name, err)
		}
		role := Pull
		if line.role != 0 {
			// A role in a version 1 file is a hand edit that forgot the
			// version: read as version 1, it would be dropped, and an
			// older nixcache would take the file for one without roles.
			if f.Version < versionRoles {
				return nil, fmt.Errorf("line %d: client %q: role needs version = %d; line %d says version = %d", line.role, name, versionRoles, lines.version, f.Version)
			}
			if role, err = ParseRole(fc.Role); err != nil {
				return nil, fmt.Errorf("line %d: client %q: %w", line.role, name, err)
			}
		}
		byKey[string(key.Marshal())] = name
		r.clients = append(r.clients, Client{Name: name, Key: key, Comment: fc.Comment, Role: role})
	}
	slices.SortFunc(r.clients, func(a, b Client) int { return strings.Compare(a.Name, b.Name) })
	return r, nil
}

func supportedVersion(v int) bool { return v >= versionNoRoles && v <= Version }

func versionError(line, v int) error {
	if v > Version {
		return fmt.Errorf("line %d: registry version %d is newer than this nixcache understands (%d): upgrade nixcache", line, v, Version)
	}
	return fmt.Errorf("line %d: unknown registry version %d (want %d to %d)", line, v, versionNoRoles, Version)
}

// errorLine is the line of a syntax error. The TOML library counts an
// error at the end of a line (an unclosed table name) as on the next line;
// the byte offset says which line holds the mistake.
func errorLine(text string, pos toml.Position) int {
	if pos.Start > 0 && pos.Start <= len(text) {
		return strings.Count(text[:pos.Start], "\n") + 1
	}
	return pos.Line
}
