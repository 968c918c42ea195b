package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

func TestExitStatus(t *testing.T) {
	cl, err := env.Build(1)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("NIX_DAEMON_SOCKET_PATH", env.Socket)
	t.Setenv("NIXCACHE_CONFIG", "")
	dir := t.TempDir()
	key := filepath.Join(dir, "secret")
	var out bytes.Buffer
	if code := run([]string{"nixcache", "keygen", "--name", "exit-1", "--secret-key-file", key}, &out, &out); code != 0 {
		t.Fatalf("keygen: exit %d: %s", code, out.String())
	}
	public := strings.TrimSpace(out.String())
	for _, tc := range []struct {
		args []string
		want int
	}{
		{[]string{"sign"}, 2},
		{[]string{"sign", "--no-such-flag"}, 2},
		{[]string{"verify", "--all"}, 2},
		{[]string{"keygen", "--name", "a:b", "--secret-key-file", filepath.Join(dir, "x")}, 2},
		{[]string{"key", "public", "--secret-key-file", filepath.Join(dir, "missing")}, 1},
		{[]string{"verify", "--trusted-key", public, cl.Top}, 1},
		{[]string{"sign", "--secret-key-file", key, cl.Top}, 0},
		{[]string{"verify", "--trusted-key", public, cl.Top}, 0},
	} {
		var stdout, stderr bytes.Buffer
		if got := run(append([]string{"nixcache"}, tc.args...), &stdout, &stderr); got != tc.want {
			t.Errorf("nixcache %s: exit %d, want %d\n%s", strings.Join(tc.args, " "), got, tc.want, stderr.String())
		}
	}
}

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
