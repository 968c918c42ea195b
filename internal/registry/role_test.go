package registry

import (
	"bytes"
	"errors"
	"path/filepath"
	"strings"
	"testing"
)

func TestParseRole(t *testing.T) {
	for _, ok := range []Role{Pull, Push} {
		if r, err := ParseRole(string(ok)); err != nil || r != ok {
			t.Errorf("ParseRole(%q) = %q, %v", ok, r, err)
		}
	}
	for _, bad := range []string{"", "Push", "admin", "pull,push", " push"} {
		_, err := ParseRole(bad)
		if err == nil || !strings.Contains(err.Error(), "use pull or push") {
			t.Errorf("ParseRole(%q): %v, want an error listing pull and push", bad, err)
		}
	}
}

// Push implies pull; nothing but push may push, not even a role that was
// never set.
func TestRoleAllows(t *testing.T) {
	for _, tc := range []struct {
		role, op Role
		want     bool
	}{
		{Pull, Pull, true},
		{Pull, Push, false},
		{Push, Pull, true},
		{Push, Push, true},
		{"", Pull, true},
		{"", Push, false},
		{"admin", Push, false},
	} {
		if got := tc.role.Allows(tc.op); got != tc.want {
			t.Errorf("Role(%q).Allows(%q) = %v, want %v", tc.role, tc.op, got, tc.want)
		}
	}
}

// A registry from before roles loads unchanged, every client pull, and is
// written back byte for byte.
func TestVersion1LoadsAsPull(t *testing.T) {
	k1, k2 := mustNewKeyText(t), mustNewKeyText(t)
	text := Header + "\nversion = 1\n\n[clients.a]\nkey = \"" + k1 + "\"\ncomment = \"x\"\n\n[clients.b]\nkey = \"" + k2 + "\"\n"
	r, err := Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range r.Clients() {
		if c.Role != Pull {
			t.Errorf("client %s of a version 1 file has role %q, want pull", c.Name, c.Role)
		}
	}
	if got := string(r.Marshal()); got != text {
		t.Fatalf("a version 1 file is written back as\n%s\nwas:\n%s", got, text)
	}
}

// A push client makes the file version 2 with role = "push" (and only
// that: pull is never written), so a nixcache from before roles refuses the
// file instead of dropping the roles; once no client is push, the file is
// version 1 again, exactly as before.
func TestPushMakesVersion2(t *testing.T) {
	ka, kb := mustNewKeyText(t), mustNewKeyText(t)
	r := &Registry{}
	mustAdd(t, r, "a", ka, "first")
	mustAdd(t, r, "b", kb, "")
	v1 := string(r.Marshal())
	if !strings.Contains(v1, "\nversion = 1\n") || strings.Contains(v1, "role") {
		t.Fatalf("a registry of pull clients:\n%s", v1)
	}
	if err := r.SetRole("b", Push); err != nil {
		t.Fatal(err)
	}
	got := string(r.Marshal())
	want := Header + "\nversion = 2\n" +
		"\n[clients.a]\nkey = \"" + ka + "\"\ncomment = \"first\"\n" +
		"\n[clients.b]\nkey = \"" + kb + "\"\nrole = \"push\"\n"
	if got != want {
		t.Fatalf("Marshal:\n%s\nwant:\n%s", got, want)
	}
	back, err := Parse([]byte(got))
	if err != nil {
		t.Fatal(err)
	}
	if cs := back.Clients(); cs[0].Role != Pull || cs[1].Role != Push {
		t.Fatalf("read back as %+v", cs)
	}
	if again := string(back.Marshal()); again != got {
		t.Fatalf("parse and marshal changed the file:\n%s\nwas:\n%s", again, got)
	}
	if err := back.SetRole("b", Pull); err != nil {
		t.Fatal(err)
	}
	if got := string(back.Marshal()); got != v1 {
		t.Fatalf("setting the only push client back to pull gives\n%s\nwant the version 1 file\n%s", got, v1)
	}
}

// Version 2 reads role = "pull" too, as a hand edit might write it, and
// writes it the canonical way: no role line.
func TestVersion2ReadsPull(t *testing.T) {
	k := mustNewKeyText(t)
	r, err := Parse([]byte("version = 2\nclients.a = { key = \"" + k + "\", role = 'pull' }\n"))
	if err != nil {
		t.Fatal(err)
	}
	if c := r.Clients()[0]; c.Role != Pull {
		t.Fatalf("role %q, want pull", c.Role)
	}
	if got, want := string(r.Marshal()), Header+"\nversion = 1\n\n[clients.a]\nkey = \""+k+"\"\n"; got != want {
		t.Fatalf("Marshal:\n%s\nwant:\n%s", got, want)
	}
}

func TestAddAndSetRoleRefuseUnknownRoles(t *testing.T) {
	k := mustNewKeyText(t)
	r := &Registry{}
	for _, bad := range []Role{"", "admin"} {
		if err := r.Add("a", mustParseKey(t, k), "", bad); err == nil || !strings.Contains(err.Error(), "use pull or push") {
			t.Errorf("Add with role %q: %v", bad, err)
		}
	}
	if len(r.Clients()) != 0 {
		t.Fatal("a refused add changed the registry")
	}
	if err := r.Add("a", mustParseKey(t, k), "", Push); err != nil {
		t.Fatal(err)
	}
	if err := r.SetRole("a", "admin"); err == nil || !strings.Contains(err.Error(), `unknown role "admin"`) {
		t.Errorf("SetRole admin: %v", err)
	}
	if err := r.SetRole("nope", Pull); !errors.Is(err, ErrNotFound) || !strings.Contains(err.Error(), `"nope"`) {
		t.Errorf("SetRole of an unknown client: %v, want ErrNotFound naming it", err)
	}
	if c := r.Clients()[0]; c.Role != Push {
		t.Fatalf("refused changes left role %q", c.Role)
	}
}

// Through Edit: a promotion and a demotion are each one atomic rewrite, and
// a refused one leaves the file as it was.
func TestEditSetRole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clients.toml")
	k := mustNewKeyText(t)
	if err := Edit(path, true, func(r *Registry) error { return r.Add("a", mustParseKey(t, k), "", Pull) }); err != nil {
		t.Fatal(err)
	}
	v1 := readFile(t, path)
	if err := Edit(path, false, func(r *Registry) error { return r.SetRole("a", Push) }); err != nil {
		t.Fatal(err)
	}
	v2 := readFile(t, path)
	if !bytes.Contains(v2, []byte("\nversion = 2\n")) || !bytes.Contains(v2, []byte("\nrole = \"push\"\n")) {
		t.Fatalf("after set-role push:\n%s", v2)
	}
	for _, change := range []func(*Registry) error{
		func(r *Registry) error { return r.SetRole("b", Pull) },
		func(r *Registry) error { return r.SetRole("a", "admin") },
		func(r *Registry) error {
			if err := r.SetRole("a", Pull); err != nil {
				return err
			}
			return r.SetRole("b", Pull)
		},
	} {
		if err := Edit(path, false, change); err == nil {
			t.Fatal("a refused role change succeeded")
		}
		if !bytes.Equal(readFile(t, path), v2) {
			t.Fatal("a refused role change rewrote the file")
		}
	}
	if err := Edit(path, false, func(r *Registry) error { return r.SetRole("a", Pull) }); err != nil {
		t.Fatal(err)
	}
	if got := readFile(t, path); !bytes.Equal(got, v1) {
		t.Fatalf("demoted again:\n%s\nwant the version 1 file:\n%s", got, v1)
	}
}

func TestAuthorizedKeysRoles(t *testing.T) {
	ka, kb := mustNewKeyText(t), mustNewKeyText(t)
	r := &Registry{}
	mustAdd(t, r, "a", ka, "")
	if err := r.Add("b", mustParseKey(t, kb), "", Push); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		proto Protocol
		a, b  string
	}{
		// The dispatcher is told a push client's role; a pull line is as
		// it was before roles.
		{Nixcache, "nixcache serve --client a", "nixcache serve --client b --role push"},
		// ssh and ssh-ng never upload through nixcache: the same line for
		// both roles.
		{SSH, "nix-store --serve", "nix-store --serve"},
		{SSHNG, "nix-daemon --stdio", "nix-daemon --stdio"},
	} {
		out, err := r.AuthorizedKeys(tc.proto, "")
		if err != nil {
			t.Fatal(err)
		}
		want := AuthorizedKeysHeader +
			`restrict,command="` + tc.a + `" ` + ka + " nixcache:a\n" +
			`restrict,command="` + tc.b + `" ` + kb + " nixcache:b\n"
		if string(out) != want {
			t.Errorf("%s:\n%s\nwant:\n%s", tc.proto, out, want)
		}
	}
}
