package nixconf

import (
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
)

// An included secrets file that is not a nix.conf at all: the error says
// where, never what. Nix's own "illegal configuration line" echoes the line.
func TestSyntaxErrorsNeverQuoteTheLine(t *testing.T) {
	const token = "ghp_SECRETTOKEN1234"
	for _, secrets := range []string{
		token + "\n",
		"access-tokens = github.com=ok\n" + token + "\n",
		"\n" + token + "=x\n",
		"\n" + token + " github.com=x\n",
		"\n" + token + "= x\n",
		"\n" + token + " =x\n",
	} {
		dir := writeDir(t, map[string]string{
			"nix.conf":     "substituters = https://a.example/\ninclude secrets.conf\n",
			"secrets.conf": secrets,
		})
		_, err := Load(dir)
		var se *SyntaxError
		if !errors.As(err, &se) {
			t.Errorf("%q: %v, want a *SyntaxError", secrets, err)
			continue
		}
		line := strings.Count(secrets[:strings.Index(secrets, token)], "\n") + 1
		where := fmt.Sprintf("%q line %d: ", filepath.Join(dir, "secrets.conf"), line)
		if !strings.HasPrefix(err.Error(), where) {
			t.Errorf("%q: %v, want it to start with %s", secrets, err, where)
		}
		if strings.Contains(err.Error(), "SECRET") {
			t.Errorf("%q: the error quotes the line: %v", secrets, err)
		}
	}
}

// A key name with a non-breaking space is one word to Nix and two to most
// other readers (the managed ssh configuration's among them): Add refuses it,
// as it refuses anything that is not a Nix public key, and plans nothing.
func TestAddRefusesKeysNixcacheCannotReadBack(t *testing.T) {
	for _, key := range []string{
		"demo\u00a0x-1:Y2FjaGUuZXhhbXBsZS0xIHRlc3Qta2V5LW9ubHkhISE=",
		"demo-1:c2hvcnQ=",
		"no-colon",
	} {
		for _, setting := range []string{"trusted-public-keys", "extra-trusted-public-keys", "binary-cache-public-keys"} {
			dir := writeDir(t, map[string]string{"nix.conf": "sandbox = false\n"})
			changes, err := mustLoad(t, dir).Add(map[string][]string{setting: {key}}, EditOptions{GenericExtra: true})
			if err == nil || len(changes) != 0 {
				t.Errorf("%s %q: %d changes, %v; want an error and nothing planned", setting, key, len(changes), err)
				continue
			}
			if !strings.Contains(err.Error(), "trusted-public-keys") || strings.Contains(err.Error(), "Y2Fja") || strings.Contains(err.Error(), "c2hvcn") {
				t.Errorf("%s %q: %v", setting, key, err)
			}
		}
	}
	// Other settings hold no keys, but no value holds a control character.
	dir := writeDir(t, map[string]string{"nix.conf": ""})
	if _, err := mustLoad(t, dir).Add(map[string][]string{"substituters": {"https://a.example/\x00"}}, EditOptions{}); err == nil {
		t.Error("a NUL in a substituter was accepted")
	}
}
