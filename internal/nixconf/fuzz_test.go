package nixconf

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// What a SyntaxError may say about a line that is not an include: nothing
// taken from the line.
var contentFreeMessages = []string{
	`a line without "=": expected NAME = VALUE`,
	`expected NAME = VALUE, with "=" standing alone between spaces`,
}

// FuzzLoadAndAdd reads a nix.conf and a file it may include, and checks
// that Load's errors locate the line without quoting it, and that join's
// edit changes only what it adds.
func FuzzLoadAndAdd(f *testing.F) {
	f.Add("substituters = https://a.example/\ninclude inc.conf\n", "extra-substituters = https://b.example/\n", false)
	f.Add("include inc.conf\ntrusted-public-keys = k-1:AAAA\r\nsandbox = false", "ghp_SECRETTOKEN1234\n", true)
	f.Add("!include inc.conf\nfallback = false # comment\nbinary-caches = x\n", "binary-cache-public-keys = "+DefaultTrustedKey+"\nextra-platforms = aarch64-linux\n", true)
	f.Add("include inc.conf\n", "substituters = late\ninclude nix.conf\n", false)
	f.Add("!include nix.custom.conf\nextra-trusted-public-keys = a-1:AAAA\n", "", true)
	f.Add("access-tokens github.com=ghp_SECRET\n", "", false)
	f.Fuzz(func(t *testing.T, main, inc string, genericExtra bool) {
		// Includes stay in the test's directory: an absolute or parent path
		// would read the machine's files (and a FIFO there would block).
		if strings.Contains(main+inc, "/") {
			return
		}
		dir := t.TempDir()
		files := map[string]string{"nix.conf": main, "inc.conf": inc}
		for name, content := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		c, err := Load(dir)
		if err != nil {
			checkSyntaxError(t, dir, files, err)
			return
		}

		changes, err := c.Add(join, EditOptions{GenericExtra: genericExtra, Comment: "added by fuzz", Defaults: map[string]string{"fallback": "true"}})
		if err != nil || len(changes) == 0 {
			return
		}
		after, err := load(c.Dir, map[string][]byte{changes[0].Path: changes[0].New})
		if err != nil {
			t.Fatalf("the edit does not read back: %v\n%s", err, changes[0].New)
		}
		for name, values := range join {
			for _, v := range append(c.Effective(name), values...) {
				if !slices.Contains(after.Effective(name), v) {
					t.Fatalf("%s lost or lacks %q: before %q, after %q", name, v, c.Effective(name), after.Effective(name))
				}
			}
		}
		for _, s := range settingNames(c, after) {
			if s == "substituters" || s == "trusted-public-keys" {
				continue
			}
			was, wasSet := c.Get(s)
			now, nowSet := after.Get(s)
			if s == "fallback" && !wasSet {
				continue
			}
			if !slices.Equal(was, now) || wasSet != nowSet {
				t.Fatalf("%s changed: %q (%v) -> %q (%v)\n%s", s, was, wasSet, now, nowSet, changes[0].New)
			}
		}
	})
}

func settingNames(cs ...*Config) []string {
	var names []string
	for _, c := range cs {
		for _, a := range c.assignments {
			if !slices.Contains(names, a.name) {
				names = append(names, a.name)
			}
		}
	}
	return names
}

// checkSyntaxError requires err to locate a line of one of files and, unless
// that line is an include, to say nothing taken from it.
func checkSyntaxError(t *testing.T, dir string, files map[string]string, err error) {
	t.Helper()
	var se *SyntaxError
	if !errors.As(err, &se) {
		t.Fatalf("Load: %v, want a *SyntaxError", err)
	}
	content, ok := files[filepath.Base(se.File)]
	if !ok || filepath.Dir(se.File) != dir {
		t.Fatalf("the error names %q, which is not one of the files read", se.File)
	}
	lines := splitLines([]byte(content))
	if se.Line < 1 || se.Line > len(lines) || len(lines[se.Line-1].tokens) == 0 {
		t.Fatalf("the error names line %d of %q, which has no tokens", se.Line, content)
	}
	if first := lines[se.Line-1].tokens[0].text; first == "include" || first == "!include" {
		return // the included file's name is what the admin needs to see
	}
	if !slices.Contains(contentFreeMessages, se.Msg) {
		t.Fatalf("an error that may quote the line: %v", err)
	}
}
