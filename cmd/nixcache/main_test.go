package main

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/tests/harness"
)

// env is the harness's private nix-daemon, shared by the scripts that run
// the real Nix next to nixcache.
var env *harness.Env

func TestMain(m *testing.M) {
	testscript.Main(withHarness{m}, map[string]func(){
		"nixcache": func() { os.Exit(main1()) },
	})
}

// withHarness starts the harness only in the test process, not in the
// copies of it that testscript runs as the nixcache command.
type withHarness struct{ m *testing.M }

func (w withHarness) Run() int { return harness.RunTests(w.m, &env) }

func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata",
		Setup: func(e *testscript.Env) error {
			home := filepath.Join(e.WorkDir, "home")
			e.Setenv("HOME", home)
			e.Setenv("XDG_CONFIG_HOME", filepath.Join(home, ".config"))
			e.Setenv("XDG_CACHE_HOME", filepath.Join(home, ".cache"))
			// Never read the machine's /etc/nixcache/config.toml.
			empty := filepath.Join(e.WorkDir, ".empty-config.toml")
			if err := os.WriteFile(empty, nil, 0o644); err != nil {
				return err
			}
			e.Setenv("NIXCACHE_CONFIG", empty)
			e.Setenv("NIX_CONF_DIR", env.ConfDir)
			e.Setenv("NIX_REMOTE", "daemon")
			e.Setenv("NIX_DAEMON_SOCKET_PATH", env.Socket)
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){
			"mode":          cmdMode,
			"build-closure": cmdBuildClosure,
			"copy-sigs":     cmdCopySigs,
			"env-from-file": cmdEnvFromFile,
			"store-daemon":  cmdStoreDaemon,
			"to-crlf":       cmdToCRLF,
		},
		RequireExplicitExec: true,
	})
}

// mode FILE PERM asserts a file's permission bits.
func cmdMode(ts *testscript.TestScript, neg bool, args []string) {
	if len(args) != 2 {
		ts.Fatalf("usage: mode FILE PERM")
	}
	want, err := strconv.ParseUint(args[1], 8, 32)
	ts.Check(err)
	st, err := os.Stat(ts.MkAbs(args[0]))
	ts.Check(err)
	if got := st.Mode().Perm(); (got == os.FileMode(want)) == neg {
		ts.Fatalf("%s has mode %04o, want %s%04o", args[0], got, map[bool]string{true: "not ", false: ""}[neg], want)
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

// env-from-file VAR FILE sets $VAR to FILE's content, trimmed: a public key
// for commands that take it as an argument.
func cmdEnvFromFile(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: env-from-file VAR FILE")
	}
	ts.Setenv(args[0], strings.TrimSpace(ts.ReadFile(args[1])))
}

// to-crlf SRC DST writes SRC with Windows line endings to DST.
func cmdToCRLF(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 {
		ts.Fatalf("usage: to-crlf SRC DST")
	}
	text := strings.ReplaceAll(ts.ReadFile(args[0]), "\n", "\r\n")
	ts.Check(os.WriteFile(ts.MkAbs(args[1]), []byte(text), 0o600))
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
