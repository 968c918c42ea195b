package sshconf

import (
	"fmt"
	"net/url"
	"strconv"
	"strings"
)

// URL is a cache address as given to join: ssh://USER@HOST[:PORT] or
// ssh-ng://USER@HOST[:PORT].
type URL struct {
	Scheme string // "ssh" or "ssh-ng"
	Target Target
}

// DefaultUser is the cache account NixOS's nix.sshServe creates.
const DefaultUser = "nix-ssh"

// ParseURL parses a cache address; the user defaults to nix-ssh and the port
// to 22.
func ParseURL(s string) (URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Opaque != "" {
		return URL{}, fmt.Errorf("cache address %q is not a URL like ssh-ng://nix-ssh@cache.example.org", s)
	}
	if u.Scheme != "ssh" && u.Scheme != "ssh-ng" {
		return URL{}, fmt.Errorf("cache address %q: the scheme must be ssh:// or ssh-ng://", s)
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" {
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
	if u.User != nil {
		if _, hasPass := u.User.Password(); hasPass || u.User.Username() == "" {
			return URL{}, fmt.Errorf("cache address %q: give a user name and no password", s)
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
	return URL{Scheme: u.Scheme, Target: t}, nil
}

// Substituter is the URL for nix.conf: the port is left to ssh's
// configuration, since Nix 2.8 reads "host:port" as a host name.
func (u URL) Substituter() string {
	return fmt.Sprintf("%s://%s@%s", u.Scheme, u.Target.User, u.Target.Host)
}
