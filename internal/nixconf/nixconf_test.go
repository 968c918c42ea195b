package nixconf

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// writeFiles makes each file (path relative to dir) with its contents.
func writeFiles(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func mustLoad(t *testing.T, dir string) *Config {
	t.Helper()
	c, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func wantValues(t *testing.T, what string, got []string, want ...string) {
	t.Helper()
	if !slices.Equal(got, want) {
		t.Errorf("%s = %q, want %q", what, got, want)
	}
}

func TestAFreshMachineUsesNixDefaults(t *testing.T) {
	dir := t.TempDir() // no nix.conf at all
	c := mustLoad(t, dir)
	if v, set := c.Get("substituters"); set || v != nil {
		t.Errorf("Get(substituters) = %q, %v on an empty configuration", v, set)
	}
	wantValues(t, "substituters", c.Effective("substituters"), DefaultSubstituter)
	wantValues(t, "trusted-public-keys", c.Effective("trusted-public-keys"), DefaultTrustedKey)
	wantValues(t, "trusted-substituters", c.Effective("trusted-substituters"))
	if len(c.Files) != 0 || c.Main != filepath.Join(dir, "nix.conf") || c.Target() != c.Main {
		t.Errorf("Files %q, Main %q, Target %q", c.Files, c.Main, c.Target())
	}
}

func TestIncludedFilesApplyWhereTheyAreIncluded(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"nix.conf": "substituters = https://main.example/\n" +
			"include sub/a.conf\n" +
			"!include optional-and-missing.conf\n" +
			"extra-substituters = https://after.example/\n",
		// Relative to sub/, the directory of the file that includes it.
		"sub/a.conf": "substituters = https://a.example/\ninclude b.conf\n",
		"sub/b.conf": "extra-substituters = https://b.example/ # from b\n",
	})
	c := mustLoad(t, dir)
	wantValues(t, "substituters", c.Effective("substituters"),
		"https://a.example/", "https://b.example/", "https://after.example/")
	wantValues(t, "Files", c.Files,
		filepath.Join(dir, "nix.conf"), filepath.Join(dir, "sub/a.conf"), filepath.Join(dir, "sub/b.conf"))
}

func TestAMissingIncludeIsAnError(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"nix.conf": "# local settings\ninclude local.conf\n"})
	_, err := Load(dir)
	var se *SyntaxError
	if !errors.As(err, &se) || se.File != filepath.Join(dir, "nix.conf") || se.Line != 2 ||
		!strings.Contains(err.Error(), "local.conf") {
		t.Fatalf("Load: %v", err)
	}
}

func TestIncludeLoopsAreErrorsNotCrashes(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{
		"nix.conf": "include a.conf\n",
		"a.conf":   "\n!include nix.conf\n",
	})
	_, err := Load(dir)
	var se *SyntaxError
	if !errors.As(err, &se) || se.File != filepath.Join(dir, "a.conf") || se.Line != 2 || !strings.Contains(se.Msg, "loop") {
		t.Fatalf("Load: %v", err)
	}

	// The same file under another name is still a loop.
	dir = t.TempDir()
	writeFiles(t, dir, map[string]string{"nix.conf": "include again.conf\n"})
	if err := os.Symlink("nix.conf", filepath.Join(dir, "again.conf")); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); !errors.As(err, &se) || !strings.Contains(se.Msg, "loop") {
		t.Fatalf("Load through a symlink: %v", err)
	}

	// Including one file twice is no loop.
	dir = t.TempDir()
	writeFiles(t, dir, map[string]string{
		"nix.conf":  "include keys.conf\ninclude keys.conf\n",
		"keys.conf": "extra-trusted-public-keys = k-1:AAAA\n",
	})
	wantValues(t, "trusted-public-keys", mustLoad(t, dir).Effective("trusted-public-keys"),
		DefaultTrustedKey, "k-1:AAAA", "k-1:AAAA")
}

func TestExtraSettingsAndAliases(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"nix.conf": "" +
		"extra-substituters = https://dropped.example/\n" + // replaced by the next line, as in Nix
		"binary-caches = https://old-name.example/\n" +
		"extra-binary-caches = https://old-extra.example/\n" +
		"extra-substituters = https://new-extra.example/\n" +
		"extra-trusted-public-keys = k-1:AAAA\n" + // appends to the default
		"extra-binary-cache-public-keys = k-2:BBBB\n",
	})
	c := mustLoad(t, dir)
	wantValues(t, "substituters", c.Effective("binary-caches"),
		"https://old-name.example/", "https://old-extra.example/", "https://new-extra.example/")
	wantValues(t, "trusted-public-keys", c.Effective("trusted-public-keys"), DefaultTrustedKey, "k-1:AAAA", "k-2:BBBB")
	v, set := c.Get("trusted-public-keys")
	if !set {
		t.Error("extra-trusted-public-keys does not count as set")
	}
	wantValues(t, "Get(trusted-public-keys)", v, "k-1:AAAA", "k-2:BBBB")
	if s, extra := Canonical("extra-platforms"); s != "extra-platforms" || extra {
		t.Errorf("extra-platforms is a setting of its own, got %q, %v", s, extra)
	}
}

func TestCommentsCRLFAndEmptyValues(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"nix.conf": "" +
		"# comment\r\n" +
		"substituters = https://a.example/#fragment https://cut.example/\r\n" + // Nix cuts at any '#'
		"\ttrusted-public-keys\t=\tk-1:AAAA   k-2:BBBB\r\n" +
		"trusted-substituters =\r\n",
	})
	c := mustLoad(t, dir)
	wantValues(t, "substituters", c.Effective("substituters"), "https://a.example/")
	wantValues(t, "trusted-public-keys", c.Effective("trusted-public-keys"), "k-1:AAAA", "k-2:BBBB")
	if v, set := c.Get("trusted-substituters"); !set || len(v) != 0 {
		t.Errorf("an empty assignment: %q, %v", v, set)
	}
}

func TestMalformedLinesAreSyntaxErrorsThatQuoteNoValues(t *testing.T) {
	for content, want := range map[string]string{
		"substituters = https://a/\nsandbox\n":             `line 2: a line without "="`,
		"\n\nextra-substituters=https://secret.example/\n": `line 3: expected NAME = VALUE, with "=" standing alone`,
		"access-tokens github.com=secret-token\n":          `line 1: expected NAME = VALUE, with "=" standing alone`,
		"include a.conf b.conf\n":                          `line 1: include takes exactly one file name`,
		"include = a.conf\n":                               `line 1: include takes exactly one file name`,
		"substituters = https://a/ # fine\n!include\n":     `line 2: a line without "="`,
	} {
		dir := t.TempDir()
		writeFiles(t, dir, map[string]string{"nix.conf": content})
		_, err := Load(dir)
		var se *SyntaxError
		if !errors.As(err, &se) || se.File != filepath.Join(dir, "nix.conf") {
			t.Errorf("%q: %v, want a *SyntaxError", content, err)
			continue
		}
		if !strings.Contains(err.Error(), want) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%q: %v, want %q", content, err, want)
		}
		if !strings.HasPrefix(err.Error(), `"`+se.File+`" line `) {
			t.Errorf("error does not start with the file: %v", err)
		}
	}
}

func TestUnreadableFilesAreSkippedAsNixDoes(t *testing.T) {
	dir := t.TempDir()
	writeFiles(t, dir, map[string]string{"nix.conf": "include secrets\nextra-substituters = https://x/\n"})
	// A directory exists but cannot be read as a file; Nix ignores it.
	if err := os.Mkdir(filepath.Join(dir, "secrets"), 0o755); err != nil {
		t.Fatal(err)
	}
	c := mustLoad(t, dir)
	wantValues(t, "Skipped", c.Skipped, filepath.Join(dir, "secrets"))
	wantValues(t, "substituters", c.Effective("substituters"), DefaultSubstituter, "https://x/")
}

func TestConfDirFollowsNixConfDir(t *testing.T) {
	t.Setenv("NIX_CONF_DIR", "")
	if got := ConfDir(); got != "/etc/nix" {
		t.Errorf("ConfDir() = %q without NIX_CONF_DIR", got)
	}
	t.Setenv("NIX_CONF_DIR", "/opt/nix/etc")
	if got := ConfDir(); got != "/opt/nix/etc" {
		t.Errorf("ConfDir() = %q", got)
	}
}
