package sshconf

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// A cache address that parses renders a substituter that parses to the
// same cache, and a managed block with exactly the directives nixcache
// writes, no line break from the input, and a record that reads back. A
// key the record cannot carry is refused instead.
func FuzzParseURL(f *testing.F) {
	for _, s := range []string{
		"ssh-ng://nix-ssh@cache.example.org", "ssh://cache:2222", "ssh-ng://b@10.0.0.7:22/?max-connections=8",
		"ssh://-oProxyCommand=x@cache", "ssh://u@cache%0aProxyCommand", "ssh-ng://cache?max-connections=1",
		"nixcache://nix-ssh@cache:2222?substituter-port=37515", "nixcache://cache?substituter-port=1&max-connections=2",
	} {
		f.Add(s, testNixKey)
	}
	f.Add("ssh-ng://cache", "cache\v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
	f.Add("ssh-ng://cache", "cache-1:AAAA\nProxyCommand x")
	directive := regexp.MustCompile(`^  (Port [0-9]+|IdentityFile /root/\.ssh/nixcache_ed25519|IdentitiesOnly yes|UserKnownHostsFile /root/\.ssh/nixcache_known_hosts|GlobalKnownHostsFile /dev/null|StrictHostKeyChecking yes|UpdateHostKeys no|CheckHostIP no|BatchMode yes|ConnectTimeout 5|ServerAliveInterval 5|ServerAliveCountMax 3|ControlMaster no)$`)
	f.Fuzz(func(t *testing.T, s, key string) {
		u, err := ParseSubstituter(s)
		if err != nil {
			return
		}
		tg := u.Target
		if !safeName.MatchString(tg.User) || !safeName.MatchString(tg.Host) || strings.HasPrefix(tg.User, "-") || strings.HasPrefix(tg.Host, "-") {
			t.Fatalf("%q gave user %q host %q", s, tg.User, tg.Host)
		}
		sub := u.Substituter()
		again, err := ParseSubstituter(sub)
		if err != nil || again.Scheme != u.Scheme || again.Target.User != tg.User || again.Target.Host != tg.Host ||
			again.Substituter() != sub || again.Target.Port != 22 || max(again.MaxConnections, 1) != max(u.MaxConnections, 1) ||
			again.SubstituterPort != u.SubstituterPort {
			t.Fatalf("%q -> %q -> %+v, %v", s, sub, again, err)
		}
		// nix.conf gets a loopback URL for the channel, never anything of
		// the input's but the port; the ssh schemes keep theirs.
		nix := u.NixSubstituter()
		if u.Channel() != (nix == fmt.Sprintf("http://127.0.0.1:%d", u.SubstituterPort)) || u.Channel() && (u.MaxConnections != 0 || u.SubstituterPort < 1 || u.SubstituterPort > 65535) ||
			!u.Channel() && (nix != sub || u.SubstituterPort != 0) {
			t.Fatalf("%q: nix.conf would get %q (%+v)", s, nix, u)
		}
		c := Cache{URL: sub, Target: tg, PublicKey: key}
		data, err := Dir("/root/.ssh").RenderManaged([]Cache{c})
		if c.check() != nil {
			if err == nil {
				t.Fatalf("rendered a record that cannot be read back: %q", data)
			}
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		matches, directives := 0, 0
		for _, line := range lines(data) {
			switch {
			case line == "" || strings.HasPrefix(line, "# "):
			case line == "Match originalhost "+tg.Host+" user "+tg.User:
				matches++
			case directive.MatchString(line):
				directives++
			default:
				t.Fatalf("a line nixcache does not write: %q in\n%s", line, data)
			}
		}
		if matches != 1 || directives != 13 || strings.Contains(string(data), "\r") {
			t.Fatalf("%d Match lines and %d directives:\n%s", matches, directives, data)
		}
		got, err := parseManaged("f", data)
		if err != nil || len(got) != 1 || got[0] != c {
			t.Fatalf("read back %+v, %v; want %+v", got, err, c)
		}
	})
}

// Whatever the managed file holds, ReadManaged returns only caches it
// would render again, and rendering them reads back the same.
func FuzzReadManaged(f *testing.F) {
	c := Cache{URL: "ssh-ng://nix-ssh@cache", Target: Target{"nix-ssh", "cache", 2222}, PublicKey: testNixKey}
	good, err := Dir("/root/.ssh").RenderManaged([]Cache{c})
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add([]byte("# cache ssh://x@y port 22 key k:AAAA\n"))
	f.Add([]byte("#\tcache\tssh://x@y\tport\t22\tkey\t" + testNixKey))
	f.Add([]byte("# cache ssh://x@y port 022 key " + testNixKey + "\r\n"))
	f.Add([]byte("# cache nixcache://x@y?substituter-port=37515 port 22 key " + testNixKey + "\n"))
	f.Add([]byte("# cache nixcache://x@y?substituter-port=37515&max-connections=2 port 22 key " + testNixKey + "\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		caches, err := parseManaged("f", data)
		if err != nil {
			return
		}
		for _, c := range caches {
			if err := c.check(); err != nil {
				t.Fatalf("read a cache it would not write: %+v: %v", c, err)
			}
		}
		out, err := Dir("/root/.ssh").RenderManaged(caches)
		if err != nil {
			t.Fatal(err)
		}
		again, err := parseManaged("f", out)
		key := func(c Cache) string { return c.Target.String() + " " + c.URL + " " + c.PublicKey }
		sortCaches := func(cs []Cache) { slices.SortFunc(cs, func(a, b Cache) int { return strings.Compare(key(a), key(b)) }) }
		sortCaches(caches)
		sortCaches(again)
		if err != nil || !slices.Equal(again, caches) {
			t.Fatalf("read %+v, rendered and read %+v, %v", caches, again, err)
		}
	})
}

// A host key that parses renders as its type and base64 alone, which parse
// to the same key.
func FuzzParseHostKey(f *testing.F) {
	line := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFZZwjpX6h2UfYxf2s1otG+HZeYNJkdH2t6aX6qjCgor"
	for _, s := range []string{line, line + " root@cache", "cache.example.org " + line, "[cache]:2222 " + line,
		"@cert-authority * " + line, `command="x" ` + line, "garbage\n" + line, "ssh-rsa AAAA", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		k, err := ParseHostKey(s)
		if err != nil {
			return
		}
		out := AuthorizedLine(k, "")
		f := strings.Split(out, " ")
		if len(f) != 2 || f[0] != k.Type() || strings.ContainsFunc(out, func(r rune) bool { return r != ' ' && notWord(r) }) {
			t.Fatalf("%q rendered as %q", s, out)
		}
		again, err := ParseHostKey(out)
		if err != nil || !SameKey(again, k) || AuthorizedLine(again, "") != out {
			t.Fatalf("%q rendered as %q, which reads back as %v, %v", s, out, again, err)
		}
	})
}

// Only "SHA256:" and 43 characters of base64 pass as a fingerprint.
func FuzzCheckFingerprint(f *testing.F) {
	for _, s := range []string{"SHA256:jYcDuLr5w0QJD9VdkEBBi4fNAxF7b6kpsUwUzDxmGx0", "SHA256:jYcDuLr5w0QJD9VdkEBBi4fNAxF7b6kpsUwUzDxmGx1",
		"SHA256:jYcDuLr5w0QJD9VdkEBBi4fNAxF7b6kpsUwUzDxmGx0=", "SHA256:jYcDuLr5w0QJD9VdkEBBi4fNAxF7b6kpsUwUzDxmG\nx0",
		"MD5:aa:bb", "SHA256:", "sha256:jYcDuLr5w0QJD9VdkEBBi4fNAxF7b6kpsUwUzDxmGx0"} {
		f.Add(s)
	}
	shape := regexp.MustCompile(`^SHA256:[A-Za-z0-9+/]{43}$`)
	f.Fuzz(func(t *testing.T, s string) {
		if CheckFingerprint(s) == nil && !shape.MatchString(s) {
			t.Fatalf("accepted %q", s)
		}
	})
}
