package main

import (
	"bytes"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/internal/onboard"
	"github.com/urfave/cli/v2"
)

// usageDoc is where the usage lines of every command are documented.
const usageDoc = "../../docs/usage.md"

// The usage lines in docs/usage.md are the commands' own.
func TestUsageDocMatchesHelp(t *testing.T) {
	doc, err := os.ReadFile(usageDoc)
	if err != nil {
		t.Fatal(err)
	}
	var walk func(cmds []*cli.Command)
	walk = func(cmds []*cli.Command) {
		for _, c := range cmds {
			if c.UsageText != "" && !bytes.Contains(doc, []byte(c.UsageText)) {
				t.Errorf("%s lacks the usage of %q: %s", usageDoc, c.Name, c.UsageText)
			}
			walk(c.Subcommands)
		}
	}
	walk(newApp(newUI(nil, nil)).Commands)
}

// What a hostile cache says (through its daemon's error messages or ssh)
// reaches the terminal without its escape sequences.
func TestErrorsReachTheTerminalWithoutEscapeSequences(t *testing.T) {
	var stderr, stdout bytes.Buffer
	u := newUI(&stdout, &stderr)
	u.exit(errors.New("cache said: \x1b]0;pwned\x07\x1b[2Jgone\r\u009b31m"))
	u.checks([]onboard.Check{{Cache: "ssh://c", Name: "login", Status: onboard.Failed, Detail: "\x1b[1A\x1b[Kfake ✓", Hints: []string{"\x1b[31mred"}}})
	for _, out := range []string{stderr.String(), stdout.String()} {
		if strings.ContainsAny(out, "\x1b\x07\r\u009b") {
			t.Errorf("escape sequences reached the terminal: %q", out)
		}
	}
	if !strings.Contains(stderr.String(), `\x1b]0;pwned\a`) || !strings.Contains(stdout.String(), `\x1b[1A`) {
		t.Errorf("the text is not shown escaped:\n%q\n%q", stderr.String(), stdout.String())
	}
}
