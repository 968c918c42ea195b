package main

import (
	"bytes"
	"os"
	"testing"

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
