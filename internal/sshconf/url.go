package sshconf

import (
	"fmt"
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// URL is a cache address as given to join: ssh://USER@HOST[:PORT],
// ssh-ng://USER@HOST[:PORT], or nixcache://USER@HOST[:PORT] for the
// cache's own channel, which a local substituter (nixcache client
// substituter) serves to Nix over HTTP on loopback.
type URL struct {
	Scheme string // "ssh", "ssh-ng" or "nixcache"
	Target Target
	// MaxConnections > 1 lets Nix substitute over that many connections;
	// see MaxConnectionsSafe. Never set for nixcache://: the substituter's
	// channels replace Nix's connections.
	MaxConnections int
	// SubstituterPort is, for nixcache:// only, the loopback port the
	// local substituter listens on and nix.conf names.
	SubstituterPort int
}

// Channel says the cache is reached through the local substituter, not by
// Nix's own ssh stores.
func (u URL) Channel() bool { return u.Scheme == "nixcache" }

// safeName is what a user or host name may look like. ssh receives
// "USER@HOST" as an argument: nothing in it may read as an option or reach
// a shell.
var safeName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9._-]*$`)

// DefaultUser is the cache account NixOS's nix.sshServe creates.
const DefaultUser = "nix-ssh"

// ParseURL parses a cache address; the user defaults to nix-ssh and the port
// to 22.
func ParseURL(s string) (URL, error) { return parseURL(s, false) }

// ParseSubstituter parses a cache address as join records it: ParseURL's
// form plus the max-connections parameter (ssh://, ssh-ng://) or the
// substituter-port parameter, which nixcache:// needs.
func ParseSubstituter(s string) (URL, error) { return parseURL(s, true) }

func parseURL(s string, params bool) (URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Opaque != "" {
		return URL{}, fmt.Errorf("cache address %q is not a URL like ssh-ng://nix-ssh@cache.example.org", s)
	}
	if u.Scheme != "ssh" && u.Scheme != "ssh-ng" && u.Scheme != "nixcache" {
		return URL{}, fmt.Errorf("cache address %q: the scheme must be ssh:// or ssh-ng:// (Nix's ssh stores) or nixcache:// (nixcache's substituter)", s)
	}
	q := u.Query()
	maxConns, subPort := 0, 0
	if params && u.Scheme != "nixcache" && q.Has("max-connections") {
		n, err := strconv.Atoi(q.Get("max-connections"))
		if err != nil || n < 1 {
			return URL{}, fmt.Errorf("cache address %q: bad max-connections", s)
		}
		maxConns = n
		q.Del("max-connections")
	}
	if params && u.Scheme == "nixcache" {
		// The one form Substituter writes: the record must name the port
		// nix.conf was given.
		n, err := strconv.Atoi(q.Get("substituter-port"))
		if err != nil || n < 1 || n > 65535 || strconv.Itoa(n) != q.Get("substituter-port") {
			return URL{}, fmt.Errorf("cache address %q: bad or missing substituter-port", s)
		}
		subPort = n
		q.Del("substituter-port")
	}
	if (u.Path != "" && u.Path != "/") || len(q) > 0 || u.Fragment != "" {
		return URL{}, fmt.Errorf("cache address %q: give only USER@HOST[:PORT]; nixcache chooses the store parameters", s)
	}
	host := u.Hostname()
	if host == "" || strings.HasPrefix(host, "-") {
		return URL{}, fmt.Errorf("cache address %q has no host name", s)
	}
	if strings.Contains(host, ":") {
		return URL{}, fmt.Errorf("cache address %q: use a host name, not an IPv6 address (Nix's ssh stores cannot take one)", s)
	}
	if host == "localhost" {
		// Nix runs the command locally, without ssh, for "localhost".
		return URL{}, fmt.Errorf("cache address %q: Nix never uses ssh for \"localhost\"; use 127.0.0.1 or the machine's name", s)
	}
	t := Target{User: DefaultUser, Host: host, Port: 22}
	if !safeName.MatchString(host) {
		return URL{}, fmt.Errorf("cache address %q: %q is not a host name", s, host)
	}
	if u.User != nil {
		if _, hasPass := u.User.Password(); hasPass || !safeName.MatchString(u.User.Username()) {
			return URL{}, fmt.Errorf("cache address %q: give a user name (letters, digits, '.', '_', '-') and no password", s)
		}
		t.User = u.User.Username()
	}
	if p := u.Port(); p != "" {
		n, err := strconv.Atoi(p)
		if err != nil || n < 1 || n > 65535 {
			return URL{}, fmt.Errorf("cache address %q: bad port %q", s, p)
		}
		t.Port = n
	}
	return URL{Scheme: u.Scheme, Target: t, MaxConnections: maxConns, SubstituterPort: subPort}, nil
}

// Substituter is the cache as join records it, which ParseSubstituter
// reads back; for ssh:// and ssh-ng:// it is also the URL for nix.conf.
// The port is left to ssh's configuration, since Nix 2.8 reads "host:port"
// as a host name.
func (u URL) Substituter() string {
	s := fmt.Sprintf("%s://%s@%s", u.Scheme, u.Target.User, u.Target.Host)
	switch {
	case u.Channel():
		s += fmt.Sprintf("?substituter-port=%d", u.SubstituterPort)
	case u.MaxConnections > 1:
		s += fmt.Sprintf("?max-connections=%d", u.MaxConnections)
	}
	return s
}

// NixSubstituter is the URL nix.conf names: the local substituter for
// nixcache://, else Substituter.
func (u URL) NixSubstituter() string {
	if u.Channel() {
		return fmt.Sprintf("http://127.0.0.1:%d", u.SubstituterPort)
	}
	return u.Substituter()
}

// DefaultMaxSessions is OpenSSH's MaxSessions: how many sessions sshd
// allows on one connection unless its admin says otherwise.
const DefaultMaxSessions = 10

// MaxConnectionsSafe says whether a Nix of version v (as its daemon
// reports it, "2.8.0") can use max-connections > 1 on an SSH store. With
// more than one connection Nix starts an SSH master, and from Nix 2.4 until
// 2.32 (NixOS/nix#13902) and in Lix before 2.93 the child it forks takes a
// lock the parent holds, before exec: the substitution hangs for ever,
// with no ssh process. Lix numbers its releases from 2.90.
func MaxConnectionsSafe(v string) error {
	var major, minor int
	if _, err := fmt.Sscanf(v, "%d.%d", &major, &minor); err != nil || major != 2 {
		return fmt.Errorf("Nix version %q is not one nixcache knows to be safe with max-connections > 1", v)
	}
	switch {
	case minor >= 32 && minor < 90, minor >= 93:
		return nil
	case minor >= 90:
		return fmt.Errorf("Lix %s hangs with max-connections > 1 (an SSH master deadlock, fixed in Lix 2.93)", v)
	}
	return fmt.Errorf("Nix %s hangs with max-connections > 1 (an SSH master deadlock, fixed in Nix 2.32 by NixOS/nix#13902)", v)
}
