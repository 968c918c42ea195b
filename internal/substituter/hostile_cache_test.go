package substituter

import (
	"net/http"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// A hostile cache answers an upload with escape sequences (a retitled
// window, a cleared screen, a rewritten line): nix copy prints the answer's
// body, as it is, on the terminal of whoever ran it. The substituter passes
// on the line with its control characters shown, not obeyed.
func TestCachesAnswerReachesNixWithoutEscapeSequences(t *testing.T) {
	f := newFixture(t, uploading(Options{}))
	rec := newUploadRecorder(f)
	rec.refuse, rec.message = http.StatusConflict, "refused\x1b]0;pwned\x07\x1b[2J\x1b[1A\rnixcache: \x9b2Jall is well\u202e"
	nar := testNAR(500, 3)
	code, msg := f.nixCopy(t, 1, nar, "none")
	if code != http.StatusConflict {
		t.Fatalf("the cache's 409 reached Nix as %d", code)
	}
	for _, r := range msg {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) || r == utf8.RuneError {
			t.Fatalf("the cache's answer reached Nix with the control character %U: %q", r, msg)
		}
	}
	if !strings.HasPrefix(msg, "refused") || !strings.Contains(msg, `\x1b]0;pwned\a`) {
		t.Errorf("the answer %q does not show what the cache said", msg)
	}
}
