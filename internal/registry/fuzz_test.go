package registry

import (
	"bytes"
	"crypto/ed25519"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
	"golang.org/x/crypto/ssh"
)

// seedKey is a fixed ed25519 public key for the seed corpus.
func seedKey(f *testing.F, b byte) string {
	f.Helper()
	pub, err := ssh.NewPublicKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{b}, ed25519.SeedSize)).Public())
	if err != nil {
		f.Fatal(err)
	}
	return keyText(pub)
}

func addSeeds(f *testing.F) {
	k1, k2 := seedKey(f, 1), seedKey(f, 2)
	for _, s := range []string{
		Header + "\nversion = 1\n\n[clients.build-01]\nkey = \"" + k1 + "\"\ncomment = \"CI \\\"runner\\\" — café\"\n\n[clients.\"laptop.alice\"]\nkey = \"" + k2 + "\"\n",
		"version = 1 # format\nclients.b = { key = \"" + k2 + " root@b\", comment = 'literal' }\n[clients.\"a\"]\n  key = \"" + k1 + "\"\n",
		"version = 1\r\n[clients]\r\na.key = '''\n" + k1 + "'''\r\na.comment = \"\"\"x\\\n  y\"\"\"\r\n",
		"version = 1\nclients = { a = { key = \"" + k1 + "\" } }\n",
		"version = 1\n[clients.a]\nkey = \"" + k1 + "\"\n[clients.b]\nkey = \"" + k1 + "\"\n",
		"version = 2\n[clients.a]\nroles = [\"pull\"]\n",
		Header + "\nversion = 2\n\n[clients.a]\nkey = \"" + k1 + "\"\nrole = \"push\"\ncomment = \"x\"\n\n[clients.b]\nkey = \"" + k2 + "\"\n",
		"version = 2\nclients.a = { key = \"" + k1 + "\", role = 'pull' }\nclients.b.role = \"push\"\nclients.b.key = \"" + k2 + "\"\n",
		"version = 1\n[clients.a]\nkey = \"" + k1 + "\"\nrole = \"push\"\n",
		"version = 2\n[clients.a]\nkey = \"" + k1 + "\"\nrole = \"admin\"\n",
		"version = 3\n[clients.a]\nkey = \"" + k1 + "\"\nrole = \"push\"\n",
		"version = 1\nx = {a={a={a={a=1}}}}\n",
		"version = 1\n[[clients]]\n",
		"",
	} {
		f.Add([]byte(s))
	}
}

var lineNumber = regexp.MustCompile(`^line [1-9][0-9]*[: ]`)

// Parse never panics, names a line in every error about the file's content,
// allocates at most in proportion to its input, and whatever it accepts
// renders to a file that parses back to the same registry and renders the
// same again.
func FuzzParse(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		r, err := Parse(data)
		runtime.ReadMemStats(&after)
		if alloc, bound := after.TotalAlloc-before.TotalAlloc, uint64(1<<20+128*len(data)); alloc > bound {
			t.Fatalf("Parse of %d bytes allocated %d (bound %d)", len(data), alloc, bound)
		}
		if err != nil {
			if !lineNumber.MatchString(err.Error()) && !strings.HasPrefix(err.Error(), `no "version = 1" line`) {
				t.Fatalf("error without a line number: %v", err)
			}
			return
		}
		// The scan let through nothing the decoder would leave unread.
		var f file
		md, err := toml.Decode(string(data), &f)
		if err != nil || len(md.Undecoded()) > 0 {
			t.Fatalf("accepted a file with undecoded keys %v (%v)", md.Undecoded(), err)
		}
		out := r.Marshal()
		back, err := Parse(out)
		if err != nil {
			t.Fatalf("the rendering of an accepted registry does not parse: %v\n%s", err, out)
		}
		// Version 2 exactly when a client is push, so a nixcache from
		// before roles refuses what it could not keep.
		push := slices.ContainsFunc(r.Clients(), func(c Client) bool { return c.Role == Push })
		if v2 := bytes.Contains(out, []byte("\nversion = 2\n")); v2 != push {
			t.Fatalf("a push client: %v, but version 2: %v:\n%s", push, v2, out)
		}
		for _, c := range r.Clients() {
			if c.Role != Pull && c.Role != Push {
				t.Fatalf("client %q has role %q", c.Name, c.Role)
			}
		}
		if again := back.Marshal(); !bytes.Equal(again, out) {
			t.Fatalf("rendering is not stable:\n%s\nthen:\n%s", out, again)
		}
		if !slices.EqualFunc(r.Clients(), back.Clients(), func(a, b Client) bool {
			return a.Name == b.Name && a.Comment == b.Comment && a.Role == b.Role && bytes.Equal(a.Key.Marshal(), b.Key.Marshal())
		}) {
			t.Fatalf("parse, render, parse changed the clients: %v, then %v", r.Clients(), back.Clients())
		}
	})
}

// For every registry that parses, each client is exactly one authorized_keys
// line: the fixed options, the client's key, its name as comment, and
// nothing else; for the dispatcher, its name and, if push, its role.
func FuzzAuthorizedKeys(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Parse(data)
		if err != nil {
			return
		}
		for _, p := range []Protocol{SSH, SSHNG, Nixcache} {
			for _, program := range []string{"", "/nix/store/0c7bz0ivs6asxa1dwcj2ir6ir3fqx1mr-nix-2.18.1/bin/nix"} {
				checkAuthorizedKeys(t, r, p, program)
			}
		}
	})
}

func checkAuthorizedKeys(t *testing.T, r *Registry, p Protocol, program string) {
	t.Helper()
	cmd, err := ServeCommand(p, program)
	if err != nil {
		t.Fatal(err)
	}
	out, err := r.AuthorizedKeys(p, program)
	if err != nil {
		t.Fatal(err)
	}
	body, ok := strings.CutPrefix(string(out), AuthorizedKeysHeader)
	if !ok {
		t.Fatalf("no header:\n%s", out)
	}
	if strings.ContainsAny(body, "\r\x00") {
		t.Fatalf("a carriage return or NUL in:\n%q", body)
	}
	lines := strings.SplitAfter(body, "\n")
	if lines[len(lines)-1] != "" {
		t.Fatalf("the last line has no line break:\n%q", body)
	}
	lines = lines[:len(lines)-1]
	clients := r.Clients()
	if len(lines) != len(clients) {
		t.Fatalf("%d lines for %d clients:\n%s", len(lines), len(clients), body)
	}
	for i, line := range lines {
		c := clients[i]
		command := cmd
		if p == Nixcache {
			command += " --client " + c.Name
			if c.Role == Push {
				command += " --role push"
			}
		}
		options := `restrict,command="` + command + `" `
		rest, ok := strings.CutPrefix(line, options)
		if !ok || rest != c.KeyText()+" nixcache:"+c.Name+"\n" {
			t.Fatalf("line for %q is\n%q\nwant %q then its key and name", c.Name, line, options)
		}
		key, comment, opts, more, err := ssh.ParseAuthorizedKey([]byte(line))
		if err != nil || len(more) != 0 {
			t.Fatalf("sshd would not read %q as one line: %v", line, err)
		}
		if !slices.Equal(opts, []string{"restrict", `command="` + command + `"`}) || comment != "nixcache:"+c.Name ||
			!bytes.Equal(key.Marshal(), c.Key.Marshal()) {
			t.Fatalf("line %q reads as options %q, comment %q, another key", line, opts, comment)
		}
	}
}
