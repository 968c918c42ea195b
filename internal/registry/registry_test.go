package registry

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// newKey makes an ed25519 key pair and returns the public key's
// authorized_keys text (with comment) and the private key.
func newKey(t *testing.T, comment string) (string, ed25519.PrivateKey) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	text := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub)))
	if comment != "" {
		text += " " + comment
	}
	return text, priv
}

func mustParseKey(t *testing.T, text string) ssh.PublicKey {
	t.Helper()
	k, _, err := ParseKey(text)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func mustAdd(t *testing.T, r *Registry, name, keyText, comment string) {
	t.Helper()
	if err := r.Add(name, mustParseKey(t, keyText), comment, Pull); err != nil {
		t.Fatal(err)
	}
}

func TestMarshalIsSortedAndRoundTrips(t *testing.T) {
	kb, _ := newKey(t, "root@b")
	ka, _ := newKey(t, "")
	kd, _ := newKey(t, "")
	r := &Registry{}
	mustAdd(t, r, "build-02", kb, `CI "runner" \ two`)
	mustAdd(t, r, "build-01", ka, "")
	mustAdd(t, r, "laptop.alice", kd, "Alice's laptop — café")
	got := string(r.Marshal())
	want := Header + "\nversion = 1\n" +
		"\n[clients.build-01]\nkey = \"" + ka + "\"\n" +
		"\n[clients.build-02]\nkey = \"" + strings.TrimSuffix(kb, " root@b") + "\"\ncomment = \"CI \\\"runner\\\" \\\\ two\"\n" +
		"\n[clients.\"laptop.alice\"]\nkey = \"" + kd + "\"\ncomment = \"Alice's laptop — café\"\n"
	if got != want {
		t.Fatalf("Marshal:\n%s\nwant:\n%s", got, want)
	}
	back, err := Parse([]byte(got))
	if err != nil {
		t.Fatal(err)
	}
	if again := string(back.Marshal()); again != got {
		t.Fatalf("parse and marshal changed the file:\n%s\nwas:\n%s", again, got)
	}
	var names []string
	for _, c := range back.Clients() {
		names = append(names, c.Name)
	}
	if fmt.Sprint(names) != "[build-01 build-02 laptop.alice]" {
		t.Fatalf("clients %v, want sorted by name", names)
	}
	if c := back.Clients()[1]; c.Comment != `CI "runner" \ two` || !strings.HasPrefix(c.Fingerprint(), "SHA256:") {
		t.Fatalf("client read back as %+v", c)
	}
}

func TestEmptyRegistry(t *testing.T) {
	r, err := Parse([]byte("version = 1\n"))
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Clients()) != 0 || string(r.Marshal()) != Header+"\nversion = 1\n" {
		t.Fatalf("empty registry marshals as %q", r.Marshal())
	}
}

func TestAddThenRemoveRestoresBytes(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clients.toml")
	for _, name := range []string{"m", "a", "z"} {
		k, _ := newKey(t, "")
		if err := Edit(path, true, func(r *Registry) error { return r.Add(name, mustParseKey(t, k), "note "+name, Pull) }); err != nil {
			t.Fatal(err)
		}
	}
	before := readFile(t, path)
	// Names before, between and after the existing ones.
	for _, name := range []string{"0", "c", "zz"} {
		k, _ := newKey(t, "")
		if err := Edit(path, false, func(r *Registry) error { return r.Add(name, mustParseKey(t, k), "", Pull) }); err != nil {
			t.Fatal(err)
		}
		if bytes.Equal(readFile(t, path), before) {
			t.Fatalf("adding %q changed nothing", name)
		}
		if err := Edit(path, false, func(r *Registry) error { return r.Remove(name) }); err != nil {
			t.Fatal(err)
		}
		if after := readFile(t, path); !bytes.Equal(after, before) {
			t.Fatalf("add and remove of %q changed the file:\n%s\nwas:\n%s", name, after, before)
		}
	}
}

func TestDuplicates(t *testing.T) {
	k, _ := newKey(t, "root@one")
	r := &Registry{}
	mustAdd(t, r, "one", k, "")
	if err := r.Add("one", mustParseKey(t, mustNewKeyText(t)), "", Pull); !errors.Is(err, ErrExists) {
		t.Errorf("same name again: %v, want ErrExists", err)
	}
	// The same key with another comment is the same key.
	other := strings.Replace(k, "root@one", "someone@else", 1)
	err := r.Add("two", mustParseKey(t, other), "", Pull)
	if !errors.Is(err, ErrDuplicateKey) || !strings.Contains(err.Error(), `"one"`) {
		t.Errorf("same key under another name: %v, want ErrDuplicateKey naming \"one\"", err)
	}
	if len(r.Clients()) != 1 {
		t.Errorf("a refused add changed the registry: %d clients", len(r.Clients()))
	}
}

func mustNewKeyText(t *testing.T) string {
	k, _ := newKey(t, "")
	return k
}

func TestNames(t *testing.T) {
	for _, ok := range []string{"a", "build-01", "B_2", "laptop.alice", "9", strings.Repeat("x", 63)} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("ValidateName(%q): %v", ok, err)
		}
	}
	for _, bad := range []string{"", "-a", ".a", "_a", "a b", "a/b", "a:b", "a\"b", "a\nb", "ä", "a@b", strings.Repeat("x", 64)} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("ValidateName(%q) accepted it", bad)
		}
	}
}

func TestComments(t *testing.T) {
	if err := ValidateComment("CI runner, rack 3 — ok"); err != nil {
		t.Error(err)
	}
	for _, bad := range []string{"a\nb", "a\tb", "a\x00", "\xff", strings.Repeat("x", 201)} {
		if err := ValidateComment(bad); err == nil {
			t.Errorf("ValidateComment(%q) accepted it", bad)
		}
	}
}

func TestBadKeys(t *testing.T) {
	good, priv := newKey(t, "me@host")
	pemBlock, err := ssh.MarshalPrivateKey(priv, "")
	if err != nil {
		t.Fatal(err)
	}
	private := string(pem.EncodeToMemory(pemBlock))
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	smallPub, _ := ssh.NewPublicKey(&small.PublicKey)
	signer, _ := ssh.NewSignerFromKey(priv)
	cert := &ssh.Certificate{Key: mustParseKey(t, good), CertType: ssh.UserCert, ValidPrincipals: []string{"nix-ssh"}, ValidBefore: ssh.CertTimeInfinity}
	if err := cert.SignCert(rand.Reader, signer); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, text, want string }{
		{"empty", "  ", "empty"},
		{"garbage", "hello world", "not an OpenSSH public key"},
		{"truncated", good[:40], "not an OpenSSH public key"},
		{"options", `command="/bin/sh" ` + good, "options"},
		{"restrict", "restrict " + good, "options"},
		{"two keys", good + "\n" + mustNewKeyText(t), "several lines"},
		{"private key", private, "private key"},
		{"private key one line", strings.ReplaceAll(private, "\n", " "), "private key"},
		{"small rsa", string(ssh.MarshalAuthorizedKey(smallPub)), "1024 bits"},
		{"certificate", string(ssh.MarshalAuthorizedKey(cert)), "certificates"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := ParseKey(tc.text)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("ParseKey: %v, want an error saying %q", err, tc.want)
			}
			// Errors never quote what they were given.
			for _, field := range strings.Fields(tc.text) {
				if len(field) > 12 && strings.Contains(err.Error(), field) {
					t.Fatalf("the error quotes its input: %v", err)
				}
			}
		})
	}
	key, comment, err := ParseKey("  " + good + "\n")
	if err != nil || comment != "me@host" || key.Type() != ssh.KeyAlgoED25519 {
		t.Fatalf("ParseKey(good) = %v, %q, %v", key, comment, err)
	}
}

func TestParseErrorsNameTheLine(t *testing.T) {
	k1, _ := newKey(t, "")
	k2, _ := newKey(t, "")
	for _, tc := range []struct{ name, text, want string }{
		{"unknown client field", "version = 1\n\n[clients.a]\nkey = \"" + k1 + "\"\nkye = \"x\"\n",
			`line 5: unknown field "kye" in client "a" (known: key, role, comment)`},
		{"unknown top-level setting", "# c\nversion = 1\nowner = \"me\"\n", `line 3: unknown setting "owner"`},
		{"unknown table", "version = 1\n\n[servers.x]\nhost = \"h\"\n", `line 3: unknown setting "servers"`},
		{"dotted unknown field", "version = 1\n[clients]\na.key = \"" + k1 + "\"\na.extra = 1\n",
			`line 4: unknown field "extra" in client "a"`},
		// Roles come with version 2; in a version 1 file a role is a hand
		// edit that forgot the version.
		{"role in version 1", "version = 1\n[clients.a]\nkey = \"" + k1 + "\"\nrole = \"push\"\n",
			`line 4: client "a": role needs version = 2; line 1 says version = 1`},
		{"pull role in version 1", "clients.a.key = \"" + k1 + "\"\nclients.a.role = \"pull\"\nversion = 1\n",
			`line 2: client "a": role needs version = 2; line 3 says version = 1`},
		{"unknown role", "version = 2\n\n[clients.a]\nkey = \"" + k1 + "\"\nrole = \"admin\"\n",
			`line 5: client "a": unknown role "admin": use pull or push`},
		{"empty role", "version = 2\n[clients.a]\nrole = \"\"\nkey = \"" + k1 + "\"\n",
			`line 3: client "a": unknown role "": use pull or push`},
		{"roles as a list", "version = 2\n[clients.a]\nkey = \"" + k1 + "\"\nrole = [\"pull\"]\n",
			`line 4: "clients.a.role" is a list`},
		{"role as a table", "version = 2\n[clients.a]\nkey = \"" + k1 + "\"\nrole = { push = 1 }\n",
			`line 4: "clients.a.role" is a string, not a table`},
		{"role not a string", "version = 2\n[clients.a]\nkey = \"" + k1 + "\"\nrole = 1\n",
			`line 4 (last key "clients.a.role"): incompatible types`},
		{"roles, plural", "version = 2\n[clients.a]\nkey = \"" + k1 + "\"\nroles = \"push\"\n",
			`line 4: unknown field "roles" in client "a" (known: key, role, comment)`},
		{"newer version", "# x\nversion = 3\n", "line 2: registry version 3 is newer than this nixcache understands (2): upgrade nixcache"},
		{"newer version with its fields", "# x\nversion = 3\n[clients.a]\nkey = \"" + k1 + "\"\nscopes = [\"pull\"]\n",
			"line 2: registry version 3 is newer than this nixcache understands (2): upgrade nixcache"},
		{"version 0", "version = 0\n", "line 1: unknown registry version 0 (want 1 to 2)"},
		{"list", "version = 1\n[clients.a]\nkey = [\"" + k1 + "\"]\n", `line 3: "clients.a.key" is a list`},
		{"array of tables", "version = 1\n[[clients]]\n", "line 2: arrays of tables"},
		{"too deep", "version = 1\n[clients.a]\nkey.x = 1\n", "line 3: keys nest at most three deep"},
		{"no version", "[clients.a]\nkey = \"" + k1 + "\"\n", `no "version = 1" line`},
		{"malformed", "version = 1\n[clients.a]\nkey = \"unterminated\n", "line 3: "},
		{"malformed table", "version = 1\n[clients.a\n", "line 2: "},
		{"wrong type", "version = 1\n[clients.a]\nkey = 3\n", "line 3 (last key \"clients.a.key\"): incompatible types"},
		{"bad key", "version = 1\n\n[clients.a]\ncomment = \"x\"\nkey = \"ssh-ed25519 AAAAnope\"\n",
			`line 5: client "a": not an OpenSSH public key`},
		{"missing key", "version = 1\n\n[clients.a]\ncomment = \"x\"\n", `line 3: client "a" has no key`},
		{"bad name", "version = 1\n\n[clients.\"a b\"]\nkey = \"" + k1 + "\"\n", `line 3: client name "a b" is not allowed`},
		{"same key twice", "version = 1\n[clients.a]\nkey = \"" + k1 + "\"\n[clients.b]\nkey = \"" + k1 + " other-comment\"\n",
			`line 5: client "b": this key is already registered as "a"`},
		{"same table twice", "version = 1\n[clients.a]\nkey = \"" + k1 + "\"\n[clients.a]\nkey = \"" + k2 + "\"\n", "line 4: "},
		{"control character in comment", "version = 1\n[clients.a]\nkey = \"" + k1 + "\"\ncomment = \"a\\tb\"\n",
			`line 4: client "a": the comment contains control characters`},
		{"private key", "version = 1\n[clients.a]\nkey = \"\"\"\n-----BEGIN OPENSSH PRIVATE KEY-----\nb3Blbn\n-----END OPENSSH PRIVATE KEY-----\"\"\"\n",
			`line 3: client "a": this is a private key`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.text))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("Parse: %v\nwant an error containing %q", err, tc.want)
			}
		})
	}
}

// A file edited by hand in another TOML style still reads, and is written
// back in the canonical form.
func TestParseOtherStyles(t *testing.T) {
	k1, _ := newKey(t, "")
	k2, _ := newKey(t, "root@b")
	text := `version = 1 # format
clients.b = { key = "` + k2 + `", comment = 'literal' }
[clients."a"]
  key = "` + k1 + `"
`
	r, err := Parse([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	cs := r.Clients()
	if len(cs) != 2 || cs[0].Name != "a" || cs[1].Comment != "literal" || cs[1].KeyText()+" root@b" != k2 {
		t.Fatalf("read %+v", cs)
	}
}

func TestEditLeavesFileUntouchedOnError(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "clients.toml")
	k, _ := newKey(t, "")
	if err := Edit(path, true, func(r *Registry) error { return r.Add("a", mustParseKey(t, k), "", Pull) }); err != nil {
		t.Fatal(err)
	}
	before := readFile(t, path)
	for _, tc := range []struct {
		name   string
		change func(*Registry) error
		want   error
	}{
		{"same name", func(r *Registry) error { return r.Add("a", mustParseKey(t, mustNewKeyText(t)), "", Pull) }, ErrExists},
		{"same key", func(r *Registry) error { return r.Add("b", mustParseKey(t, k), "", Pull) }, ErrDuplicateKey},
		{"unknown name", func(r *Registry) error { return r.Remove("nope") }, ErrNotFound},
		{"change after a good add", func(r *Registry) error {
			if err := r.Add("c", mustParseKey(t, mustNewKeyText(t)), "", Pull); err != nil {
				return err
			}
			return r.Remove("nope")
		}, ErrNotFound},
	} {
		if err := Edit(path, true, tc.change); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if !bytes.Equal(readFile(t, path), before) {
			t.Fatalf("%s: the file changed", tc.name)
		}
	}
	// A file that does not parse is reported and left as it is.
	broken := append(slicesClone(before), "oops = \n"...)
	if err := os.WriteFile(path, broken, 0o644); err != nil {
		t.Fatal(err)
	}
	err := Edit(path, true, func(r *Registry) error { return r.Remove("a") })
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("%q: line ", path)) {
		t.Fatalf("editing a broken file: %v", err)
	}
	if !bytes.Equal(readFile(t, path), broken) {
		t.Fatal("a broken file was rewritten")
	}
	// Nothing but the registry and its lock is ever left in the directory.
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if fmt.Sprint(names) != "[.clients.toml.lock clients.toml]" {
		t.Fatalf("directory holds %v", names)
	}
}

func slicesClone(b []byte) []byte { return append([]byte(nil), b...) }

func TestEditCreatesOnlyWhenAsked(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "var", "lib", "nixcache")
	path := filepath.Join(dir, "clients.toml")
	err := Edit(path, false, func(r *Registry) error { return r.Remove("a") })
	if !errors.Is(err, ErrNoRegistry) {
		t.Fatalf("removing from a missing registry: %v, want ErrNoRegistry", err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a failed remove created %s", dir)
	}
	if _, err := Load(path); !errors.Is(err, ErrNoRegistry) {
		t.Fatalf("Load of a missing registry: %v", err)
	}
	k, _ := newKey(t, "")
	if err := Edit(path, true, func(r *Registry) error { return r.Add("a", mustParseKey(t, k), "", Pull) }); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o644 {
		t.Fatalf("registry has mode %o, want 0644", st.Mode().Perm())
	}
}

// Two admins adding clients at once both see their change kept.
func TestConcurrentEditsAreSerialised(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clients.toml")
	const n = 16
	keys := make([]ssh.PublicKey, n)
	for i := range keys {
		keys[i] = mustParseKey(t, mustNewKeyText(t))
	}
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Go(func() {
			errs <- Edit(path, true, func(r *Registry) error { return r.Add(fmt.Sprintf("c%02d", i), keys[i], "", Pull) })
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	r, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Clients()) != n {
		t.Fatalf("%d clients after %d concurrent adds", len(r.Clients()), n)
	}
}

func TestEditGivesUpOnAHeldLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "clients.toml")
	unlock, err := lock(path)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	old := LockTimeout
	LockTimeout = 100 * time.Millisecond
	defer func() { LockTimeout = old }()
	err = Edit(path, true, func(r *Registry) error { return nil })
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("Edit with the lock held elsewhere: %v, want ErrLocked", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatal("Edit wrote without the lock")
	}
}

func TestAuthorizedKeys(t *testing.T) {
	ka, _ := newKey(t, "root@a")
	kb, _ := newKey(t, "")
	r := &Registry{}
	mustAdd(t, r, "b", kb, "second")
	mustAdd(t, r, "a", ka, "first")
	keyA := strings.TrimSuffix(ka, " root@a")
	for _, tc := range []struct {
		proto   Protocol
		program string
		command string
	}{
		{SSHNG, "", "nix-daemon --stdio"},
		{SSH, "", "nix-store --serve"},
		{SSHNG, "/nix/store/0c7bz0ivs6asxa1dwcj2ir6ir3fqx1mr-nix-2.18.1/bin/nix-daemon", "/nix/store/0c7bz0ivs6asxa1dwcj2ir6ir3fqx1mr-nix-2.18.1/bin/nix-daemon --stdio"},
		{SSH, "/usr/bin/nix-store", "/usr/bin/nix-store --serve"},
	} {
		out, err := r.AuthorizedKeys(tc.proto, tc.program)
		if err != nil {
			t.Fatal(err)
		}
		want := AuthorizedKeysHeader +
			`restrict,command="` + tc.command + `" ` + keyA + " nixcache:a\n" +
			`restrict,command="` + tc.command + `" ` + kb + " nixcache:b\n"
		if string(out) != want {
			t.Errorf("%s %q:\n%s\nwant:\n%s", tc.proto, tc.program, out, want)
		}
	}
	// The dispatcher is told each line's client.
	out, err := r.AuthorizedKeys(Nixcache, "/usr/bin/nixcache")
	if err != nil {
		t.Fatal(err)
	}
	want := AuthorizedKeysHeader +
		`restrict,command="/usr/bin/nixcache serve --client a" ` + keyA + " nixcache:a\n" +
		`restrict,command="/usr/bin/nixcache serve --client b" ` + kb + " nixcache:b\n"
	if string(out) != want {
		t.Errorf("nixcache:\n%s\nwant:\n%s", out, want)
	}
	for _, bad := range []string{"nix-daemon --write", "bin/nix-daemon", "/a//b", "/bin/sh;id", `"x"`, "$(id)", "-x", "/nix/store/x y"} {
		if _, err := r.AuthorizedKeys(SSHNG, bad); err == nil {
			t.Errorf("serve command %q accepted", bad)
		}
	}
	if _, err := r.AuthorizedKeys("ssh-ng2", ""); err == nil {
		t.Error("unknown protocol accepted")
	}
	empty, err := (&Registry{}).AuthorizedKeys(SSHNG, "")
	if err != nil || string(empty) != AuthorizedKeysHeader {
		t.Errorf("an empty registry renders %q, %v; want only the header", empty, err)
	}
}

func readFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
