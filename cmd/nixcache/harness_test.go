//go:build harness

package main

import (
	"bytes"
	"context"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/tests/harness"
)

// env is the harness's private nix-daemon, shared by the scripts that run
// the real Nix next to nixcache. These tests need root (go test -tags
// harness, as scripts/test.sh runs them).
var env *harness.Env

func init() {
	runTests = func(m *testing.M) int { return harness.RunTests(m, &env) }
}

// The scripts in testdata/harness sign, verify and interoperate through the
// real daemon.
func TestHarnessScripts(t *testing.T) {
	testscript.Run(t, scriptParams("testdata/harness", func(e *testscript.Env) {
		e.Setenv("NIX_CONF_DIR", env.ConfDir)
		e.Setenv("NIX_DAEMON_SOCKET_PATH", env.Socket)
	}, map[string]func(*testscript.TestScript, bool, []string){
		"build-closure": cmdBuildClosure,
		"copy-sigs":     cmdCopySigs,
		"store-daemon":  cmdStoreDaemon,
	}))
}

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

// build-closure VAR N builds a fresh closure of N paths in the server's
// store and sets $VAR to its top path.
func cmdBuildClosure(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: build-closure VAR N")
	}
	n, err := strconv.Atoi(args[1])
	ts.Check(err)
	cl, err := env.Build(n)
	ts.Check(err)
	ts.Setenv(args[0], cl.Top)
}

// copy-sigs FROM TO attaches FROM's signatures to TO, as an attacker or a
// confused tool might: signatures made over another path's fingerprint.
func cmdCopySigs(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: copy-sigs FROM TO")
	}
	c, err := daemon.Dial(context.Background(), env.Socket)
	ts.Check(err)
	defer c.Close()
	info, err := c.QueryPathInfo(args[0])
	ts.Check(err)
	if len(info.Sigs) == 0 {
		ts.Fatalf("%s has no signatures to copy", args[0])
	}
	ts.Check(c.AddSignatures(args[1], info.Sigs))
}

// store-daemon starts a nix-daemon for a fresh chroot store under $WORK and
// points NIX_DAEMON_SOCKET_PATH at it, so that --all covers exactly what
// the script puts there; $STORE is the store's URI for Nix's own commands.
// The daemon stops when the script ends.
func cmdStoreDaemon(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 0 {
		ts.Fatalf("usage: store-daemon")
	}
	work := ts.Getenv("WORK")
	store := "local?root=" + filepath.Join(work, "store-root")
	socket := filepath.Join(work, "store.sock")
	stop, err := env.StartDaemon(store, socket)
	ts.Check(err)
	ts.Defer(stop)
	ts.Setenv("STORE", store)
	ts.Setenv("NIX_DAEMON_SOCKET_PATH", socket)
}
