package nixkey

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// A throwaway test-only key pair.
const (
	testSecretB64 = "Lq0PaH4eeUzCQr4sOyuhWDeijPFAO0teXcwD4HBng70xuakMvTx90AUxB082s+Dm3Xg/R9LmUQjwo7YFXypGWQ=="
	testPublicB64 = "MbmpDL08fdAFMQdPNrPg5t14P0fS5lEI8KO2BV8qRlk="
)

// Names Nix accepts but nixcache cannot carry safely: nix.conf and the
// managed ssh configuration split at white space (the latter, like most
// tools, at Unicode white space too), so a name with a non-breaking space is
// written fine and breaks every later reading of what was written.
var badNames = map[string]string{
	"demo\u00a0x-1": "U+00A0",
	"demo\u2003x-1": "U+2003",
	"démo-1":        "U+00E9",
	"demo\x7f-1":    "U+007F",
	"demo\x00-1":    "U+0000",
	"demo\x1bx-1":   "U+001B",
	"demo\x85x-1":   "not UTF-8",
	"a#b":           `'#'`,
}

func TestKeyNamesArePrintableASCII(t *testing.T) {
	for _, name := range []string{"cache.nixos.org-1", "cache.example.org-1", "my_cache-2024", "a", "hydra.nixos.org-1", "x~!$%&*+,./;<=>?@[]^_`{|}-1"} {
		if err := ValidateName(name); err != nil {
			t.Errorf("ValidateName(%q): %v", name, err)
		}
		if _, err := ParsePublicKey(name + ":" + testPublicB64); err != nil {
			t.Errorf("ParsePublicKey with name %q: %v", name, err)
		}
	}
	for name, what := range badNames {
		if err := ValidateName(name); err == nil || !strings.Contains(err.Error(), what) {
			t.Errorf("ValidateName(%q) = %v, want an error naming %s", name, err, what)
		}
		if _, err := Generate(name); err == nil {
			t.Errorf("Generate(%q) made a key", name)
		}
		check := func(how string, err error) {
			t.Helper()
			if err == nil {
				t.Errorf("%s accepted the name %q", how, name)
				return
			}
			if !strings.Contains(err.Error(), what) {
				t.Errorf("%s: %v, want it to name %s", how, err, what)
			}
			if strings.Contains(err.Error(), testSecretB64[:8]) || strings.Contains(err.Error(), testPublicB64[:8]) {
				t.Errorf("%s: the error quotes the key: %v", how, err)
			}
		}
		_, err := ParsePublicKey(name + ":" + testPublicB64)
		check("ParsePublicKey", err)
		_, err = ParseSecretKey(name + ":" + testSecretB64)
		check("ParseSecretKey", err)

		dir := t.TempDir()
		pub, sec := filepath.Join(dir, "pub"), filepath.Join(dir, "sec")
		if err := os.WriteFile(pub, []byte(name+":"+testPublicB64+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(sec, []byte(name+":"+testSecretB64+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = ReadPublicKeyFile(pub)
		check("ReadPublicKeyFile", err)
		_, _, err = ReadSecretKeyFile(sec)
		check("ReadSecretKeyFile", err)
	}
}

// Nix trims nothing but ASCII white space; a key that only looks right after
// Unicode trimming is not one.
func TestOnlyASCIIWhiteSpaceIsTrimmed(t *testing.T) {
	if _, err := ParsePublicKey(" \ttest-only-1:" + testPublicB64 + "\n\n"); err != nil {
		t.Errorf("ASCII white space around a key: %v", err)
	}
	for _, text := range []string{
		"\u00a0test-only-1:" + testPublicB64,
		"test-only-1:" + testPublicB64 + "\u00a0",
		"\u2028test-only-1:" + testPublicB64,
	} {
		if k, err := ParsePublicKey(text); err == nil {
			t.Errorf("%q parsed as %q", text, k.String())
		}
	}
}
