package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestParse(t *testing.T) {
	c, err := Parse(`
# server defaults
key-name = "cache.example.org-1"
trusted-public-keys = ["a-1:AAAA", "b-1:BBBB"]
`)
	if err != nil {
		t.Fatal(err)
	}
	if c.KeyName != "cache.example.org-1" || len(c.TrustedPublicKeys) != 2 || c.SecretKeyFile != DefaultSecretKeyFile {
		t.Errorf("parsed %+v", c)
	}
}

func TestParseErrorsHaveLines(t *testing.T) {
	for text, want := range map[string]string{
		"key-name = \"a\"\n\nsecret_key_file = \"x\"\n": "line 3: unknown setting \"secret_key_file\"",
		"key-name = \"a\"\n[extra]\nfoo = 1\n":          "line 2: unknown setting \"extra",
		"key-name = \n":                                 "line 1: ",
		"key-name = 5\n":                                "key-name",
	} {
		_, err := Parse(text)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want %q", text, err, want)
		}
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	// The default path may be absent; an explicit one may not.
	if c, err := Load(filepath.Join(dir, "absent.toml"), false); err != nil || c.SecretKeyFile != DefaultSecretKeyFile {
		t.Errorf("absent default: %+v, %v", c, err)
	}
	if _, err := Load(filepath.Join(dir, "absent.toml"), true); err == nil {
		t.Error("an explicit missing file was accepted")
	}
	// Relative paths are relative to the file.
	p := filepath.Join(dir, "c.toml")
	os.WriteFile(p, []byte("secret-key-file = \"keys/secret\"\n"), 0o644)
	c, err := Load(p, true)
	if err != nil || c.SecretKeyFile != filepath.Join(dir, "keys/secret") {
		t.Errorf("relative path: %+v, %v", c, err)
	}
}
