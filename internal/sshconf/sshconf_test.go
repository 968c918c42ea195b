package sshconf

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

func TestParseURL(t *testing.T) {
	for in, want := range map[string]string{
		"ssh-ng://nix-ssh@cache.example.org":      "ssh-ng://nix-ssh@cache.example.org 22",
		"ssh://cache.example.org:2222":            "ssh://nix-ssh@cache.example.org 2222",
		"ssh-ng://builder@10.0.0.7:22/":           "ssh-ng://builder@10.0.0.7 22",
		"https://cache.example.org":               "error",
		"ssh://localhost":                         "error",
		"ssh://nix-ssh@[::1]:22":                  "error",
		"ssh://nix-ssh:secret@cache":              "error",
		"ssh://cache:99999":                       "error",
		"ssh://cache?max-connections=8":           "error",
		"ssh-ng://cache/nix/store":                "error",
		"ssh-ng://-oProxyCommand=evil@cache.host": "error",
		"nixcache://nix-ssh@cache.example.org":    "nixcache://nix-ssh@cache.example.org?substituter-port=0 22",
		"nixcache://cache.example.org:2222/":      "nixcache://nix-ssh@cache.example.org?substituter-port=0 2222",
		"nixcache://localhost":                    "error",
		"nixcache://[::1]:22":                     "error",
		"nixcache://u:secret@cache":               "error",
		"nixcache://-oProxyCommand=x@cache":       "error",
		"nixcache://cache?substituter-port=8080":  "error",
		"nixcache://cache?max-connections=8":      "error",
		"nixcache://cache/nix/store":              "error",
		"nixcache:cache":                          "error",
	} {
		u, err := ParseURL(in)
		got := "error"
		if err == nil {
			got = u.Substituter() + " " + strings.TrimPrefix(u.Target.Addr(), u.Target.Host+":")
		}
		if got != want {
			t.Errorf("ParseURL(%q) = %s (%v), want %s", in, got, err, want)
		}
	}
	u, err := ParseSubstituter("ssh-ng://nix-ssh@cache?max-connections=8")
	if err != nil || u.MaxConnections != 8 || u.Substituter() != "ssh-ng://nix-ssh@cache?max-connections=8" {
		t.Errorf("ParseSubstituter: %+v, %v", u, err)
	}
	// nixcache:// is recorded with the local substituter's port, which
	// nix.conf names; nothing else may ride along.
	u, err = ParseSubstituter("nixcache://nix-ssh@cache?substituter-port=37515")
	if err != nil || !u.Channel() || u.SubstituterPort != 37515 || u.NixSubstituter() != "http://127.0.0.1:37515" ||
		u.Substituter() != "nixcache://nix-ssh@cache?substituter-port=37515" {
		t.Errorf("ParseSubstituter(nixcache): %+v, %v", u, err)
	}
	for _, bad := range []string{
		"nixcache://nix-ssh@cache", "nixcache://nix-ssh@cache?substituter-port=0", "nixcache://nix-ssh@cache?substituter-port=65536",
		"nixcache://nix-ssh@cache?substituter-port=037515", "nixcache://nix-ssh@cache?substituter-port=37515&max-connections=8",
		"ssh://nix-ssh@cache?substituter-port=37515",
	} {
		if u, err := ParseSubstituter(bad); err == nil {
			t.Errorf("ParseSubstituter(%q) = %+v, want an error", bad, u)
		}
	}
}

func TestMaxConnectionsSafe(t *testing.T) {
	for v, safe := range map[string]bool{
		"2.8.0": false, "2.18.9": false, "2.31.2": false, "2.32.0": true, "2.33.1": true,
		"2.91.1": false, "2.92.0": false, "2.93.0": true, "2.94.0": true,
		"": false, "3.6.2": false, "garbage": false,
	} {
		if err := MaxConnectionsSafe(v); (err == nil) != safe {
			t.Errorf("MaxConnectionsSafe(%q) = %v, want safe=%v", v, err, safe)
		}
	}
}

// The managed configuration, as the real ssh reads it (ssh -G prints the
// settings it would use): the cache account on the cache host gets the
// port, key and pinned host key; root's other ssh use of the host does not.
func TestManagedConfigAsSSHReadsIt(t *testing.T) {
	d := Dir(t.TempDir())
	c := Cache{URL: "ssh-ng://nix-ssh@cache.example.org", Target: Target{"nix-ssh", "cache.example.org", 2222}, PublicKey: testNixKey}
	writeManaged(t, d, c)
	userConf := "Host *\n  Port 2200\n  IdentityFile ~/.ssh/other\n"
	if err := os.WriteFile(d.UserConfig(), d.EnsureInclude([]byte(userConf)), 0o600); err != nil {
		t.Fatal(err)
	}
	g := func(dest string) map[string]string {
		out, err := exec.Command("ssh", "-G", "-F", d.UserConfig(), dest).Output()
		if err != nil {
			t.Fatalf("ssh -G %s: %v", dest, err)
		}
		opts := map[string]string{}
		for _, l := range strings.Split(string(out), "\n") {
			if k, v, ok := strings.Cut(l, " "); ok {
				if _, seen := opts[k]; !seen {
					opts[k] = v
				}
			}
		}
		return opts
	}
	cache := g("nix-ssh@cache.example.org")
	for k, want := range map[string]string{
		"port": "2222", "identityfile": d.KeyFile(), "identitiesonly": "yes",
		"userknownhostsfile": d.KnownHosts(), "globalknownhostsfile": "/dev/null",
		"stricthostkeychecking": "true", "batchmode": "yes", "connecttimeout": "5",
		"serveraliveinterval": "5", "controlmaster": "false", "updatehostkeys": "false",
	} {
		if cache[k] != want {
			t.Errorf("for the cache account ssh uses %s %q, want %q", k, cache[k], want)
		}
	}
	other := g("admin@cache.example.org")
	if other["port"] != "2200" || other["identityfile"] == d.KeyFile() {
		t.Errorf("the managed block leaks into root's other ssh use: port %s, identityfile %s", other["port"], other["identityfile"])
	}
	// Including twice is not needed: a second EnsureInclude changes nothing.
	conf, _ := os.ReadFile(d.UserConfig())
	if again := d.EnsureInclude(conf); string(again) != string(conf) {
		t.Errorf("EnsureInclude is not idempotent:\n%s", again)
	}
	if !strings.HasSuffix(string(conf), userConf) {
		t.Errorf("root's own configuration was not kept verbatim:\n%s", conf)
	}
	got, err := d.ReadManaged()
	if err != nil || len(got) != 1 || got[0] != c {
		t.Errorf("ReadManaged = %+v, %v; want %+v", got, err, c)
	}
}

func TestPinReplacesOnlyItsOwnLine(t *testing.T) {
	k1 := newKey(t)
	k2 := newKey(t)
	t22 := Target{"nix-ssh", "cache", 22}
	t2222 := Target{"nix-ssh", "cache", 2222}
	data := Pin(nil, t22, k1)
	data = Pin(data, t2222, k1)
	data = Pin(data, t22, k2)
	file := filepath.Join(t.TempDir(), "known_hosts")
	if err := os.WriteFile(file, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if strings.Count(string(data), "\n") != 2 {
		t.Errorf("two targets, want two lines:\n%s", data)
	}
	if k, _ := Pinned(file, t22); k == nil || !SameKey(k, k2) {
		t.Errorf("port 22 is pinned to %v, want the new key", k)
	}
	if k, _ := Pinned(file, t2222); k == nil || !SameKey(k, k1) {
		t.Errorf("port 2222 lost its pin")
	}
	if !strings.Contains(string(data), "[cache]:2222 ") {
		t.Errorf("a non-default port is not written as ssh looks it up:\n%s", data)
	}
}

func TestParseHostKey(t *testing.T) {
	k := newKey(t)
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	for _, in := range []string{line, line + " root@cache", "cache.example.org " + line, "[cache]:2222 " + line} {
		got, err := ParseHostKey(in)
		if err != nil || !SameKey(got, k) {
			t.Errorf("ParseHostKey(%q): %v", in, err)
		}
	}
	if err := CheckFingerprint(Fingerprint(k)); err != nil {
		t.Errorf("ssh's own fingerprint %s: %v", Fingerprint(k), err)
	}
	if _, err := ParseHostKey("SHA256:abc"); err == nil {
		t.Error("a fingerprint was taken for a key")
	}
}

func TestGenerateKeyIsExclusiveAndPrivate(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nixcache_ed25519")
	pub, err := GenerateKey(path, "nixcache@test")
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("key mode %v, %v", st.Mode(), err)
	}
	read, err := ReadKey(path)
	if err != nil || !SameKey(read, pub) {
		t.Fatalf("ReadKey: %v", err)
	}
	// ssh-keygen reads it too: the OpenSSH format, no passphrase.
	out, err := exec.Command("ssh-keygen", "-y", "-P", "", "-f", path).Output()
	if err != nil || !strings.HasPrefix(string(out), strings.TrimSpace(string(ssh.MarshalAuthorizedKey(pub)))) {
		t.Errorf("ssh-keygen -y: %v, %s", err, out)
	}
	if pubLine, err := os.ReadFile(path + ".pub"); err != nil || !strings.HasSuffix(string(pubLine), " nixcache@test\n") {
		t.Errorf(".pub file: %q, %v", pubLine, err)
	}
	if _, err := GenerateKey(path, "again"); !errors.Is(err, fs.ErrExist) {
		t.Errorf("a second GenerateKey did not refuse to replace the key: %v", err)
	}
	if err := os.Chmod(path, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadKey(path); err == nil || !strings.Contains(err.Error(), "chmod 600") {
		t.Errorf("a world-readable key was accepted: %v", err)
	}
}

// FetchHostKeys fails fast on a closed port, and within its bound on a
// server that accepts and never speaks.
func TestFetchHostKeysUnreachable(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	start := time.Now()
	if _, err := FetchHostKeys(ctx, "127.0.0.1:1"); err == nil {
		t.Error("a closed port gave host keys")
	}
	if time.Since(start) > 2*time.Second {
		t.Errorf("a refused connection took %v", time.Since(start))
	}
}

func newKey(t *testing.T) ssh.PublicKey {
	t.Helper()
	path := filepath.Join(t.TempDir(), "k")
	k, err := GenerateKey(path, "")
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// testNixKey is a Nix public key (32 zero bytes).
const testNixKey = "cache-1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="

func writeManaged(t *testing.T, d Dir, caches ...Cache) {
	t.Helper()
	data, err := d.RenderManaged(caches)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(d.Managed(), data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// A managed file is read exactly as RenderManaged writes it: fields split at
// ASCII spaces and tabs only, and every part valid. Anything else is
// refused with the file and the line, and a way out that is not "join
// again" (join cannot rewrite a file it cannot read).
func TestReadManagedRefusesWhatItDidNotWrite(t *testing.T) {
	record := func(url, port, key string) string {
		return managedHeader + "\n# cache " + url + " port " + port + " key " + key + "\nMatch originalhost cache user nix-ssh\n"
	}
	good := record("ssh-ng://nix-ssh@cache", "2222", testNixKey)
	d := Dir(t.TempDir())
	if err := os.WriteFile(d.Managed(), []byte(good), 0o644); err != nil {
		t.Fatal(err)
	}
	if got, err := d.ReadManaged(); err != nil || len(got) != 1 || got[0].Target.Port != 2222 {
		t.Fatalf("a record as join writes it: %+v, %v", got, err)
	}
	for what, text := range map[string]string{
		"no-break space between fields": strings.Replace(good, "# cache ssh-ng", "# cache\u00a0ssh-ng", 1),
		"vertical tab in the key":       record("ssh-ng://nix-ssh@cache", "22", "cache\v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="),
		"not a key":                     record("ssh-ng://nix-ssh@cache", "22", "cache-1:AAAA"),
		"a secret key":                  record("ssh-ng://nix-ssh@cache", "22", "cache-1:"+strings.Repeat("A", 86)+"=="),
		"port with a sign":              record("ssh-ng://nix-ssh@cache", "+22", testNixKey),
		"port out of range":             record("ssh-ng://nix-ssh@cache", "0", testNixKey),
		"an option for a user":          record("ssh-ng://-oProxyCommand=x@cache", "22", testNixKey),
		"not as join writes the URL":    record("ssh-ng://nix-ssh@cache:22", "22", testNixKey),
		"CRLF":                          strings.ReplaceAll(good, "\n", "\r\n"),
		"invalid UTF-8":                 strings.Replace(good, "cache", "cache\xff", 1),
	} {
		if err := os.WriteFile(d.Managed(), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		got, err := d.ReadManaged()
		if err == nil {
			t.Errorf("%s: read as %+v", what, got)
			continue
		}
		if msg := err.Error(); !strings.Contains(msg, d.Managed()) || !strings.Contains(msg, " line ") || !strings.Contains(msg, "move it away") {
			t.Errorf("%s: %v, want the file, the line and a way out", what, err)
		}
	}
}

// Join never writes a record it could not read back: a key whose name
// holds a character ReadManaged would split or refuse is refused at once,
// instead of making every later join and doctor fail on the file.
func TestRenderManagedRefusesWhatItCannotReadBack(t *testing.T) {
	d := Dir(t.TempDir())
	for _, key := range []string{"cache\v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "cache\u00a01:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "cache-1:AAAA"} {
		c := Cache{URL: "ssh-ng://nix-ssh@cache", Target: Target{"nix-ssh", "cache", 22}, PublicKey: key}
		if data, err := d.RenderManaged([]Cache{c}); err == nil {
			t.Errorf("rendered a record for key %q:\n%s", key, data)
		}
	}
}

// An ssh directory with blanks reaches ssh as it is; one with characters
// ssh would read as something else is refused.
func TestManagedPathsAsSSHReadsThem(t *testing.T) {
	for _, bad := range []string{`a"b`, "a'b", `a\b`, "#a", "a%h", "~a", "a*", "a?", "a[b]", "a\nProxyCommand x"} {
		c := Cache{URL: "ssh-ng://nix-ssh@cache", Target: Target{"nix-ssh", "cache", 22}, PublicKey: testNixKey}
		if _, err := Dir("/tmp/" + bad).RenderManaged([]Cache{c}); err == nil {
			t.Errorf("rendered a configuration for ssh directory %q", bad)
		}
	}
	d := Dir(filepath.Join(t.TempDir(), "a  b"))
	if err := os.MkdirAll(string(d), 0o700); err != nil {
		t.Fatal(err)
	}
	writeManaged(t, d, Cache{URL: "ssh-ng://nix-ssh@cache", Target: Target{"nix-ssh", "cache", 22}, PublicKey: testNixKey})
	if err := os.WriteFile(d.UserConfig(), d.EnsureInclude(nil), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("ssh", "-G", "-F", d.UserConfig(), "nix-ssh@cache").CombinedOutput()
	if err != nil {
		t.Fatalf("ssh -G: %v\n%s", err, out)
	}
	for _, want := range []string{"identityfile " + d.KeyFile() + "\n", "userknownhostsfile " + d.KnownHosts() + "\n"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("ssh -G lacks %q:\n%s", want, out)
		}
	}
}

// ssh offers every IdentityFile that applies to the cache account, root's
// own included, whatever the managed block says; OtherIdentities names
// them, so that join can warn.
func TestOtherIdentities(t *testing.T) {
	d := Dir(t.TempDir())
	target := Target{"nix-ssh", "cache.example.org", 22}
	writeManaged(t, d, Cache{URL: "ssh-ng://nix-ssh@cache.example.org", Target: target, PublicKey: testNixKey})
	for conf, want := range map[string]string{
		"": "",
		"Host other\n  IdentityFile /root/.ssh/id_other\n":                                "",
		"IdentityFile /root/.ssh/id_global\nHost *\n  IdentityFile /root/.ssh/id_other\n": "/root/.ssh/id_global /root/.ssh/id_other",
	} {
		if err := os.WriteFile(d.UserConfig(), d.EnsureInclude([]byte(conf)), 0o600); err != nil {
			t.Fatal(err)
		}
		got, err := d.OtherIdentities(t.Context(), target)
		if err != nil || strings.Join(got, " ") != want {
			t.Errorf("with root's config %q: other identities %q, %v; want %q", conf, got, err, want)
		}
	}
}
