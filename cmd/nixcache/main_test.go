package main

import (
	"maps"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// runTests runs the tests; harness_test.go (-tags harness) runs them with
// the harness's private nix-daemon started first.
var runTests = func(m *testing.M) int { return m.Run() }

func TestMain(m *testing.M) {
	testscript.Main(runner{m}, map[string]func(){
		"nixcache": func() { os.Exit(main1()) },
	})
}

// runner starts what runTests starts only in the test process, not in the
// copies of it that testscript runs as the nixcache command.
type runner struct{ m *testing.M }

func (r runner) Run() int { return runTests(r.m) }

// The scripts in testdata need no Nix daemon: they run as any user. Those in
// testdata/harness run the real Nix next to nixcache (harness_test.go).
func TestScripts(t *testing.T) {
	testscript.Run(t, scriptParams("testdata", nil))
}

// scriptParams runs the scripts in dir with a private HOME and no machine
// configuration: NIX_CONF_DIR and the daemon's socket are under $WORK unless
// setup points them elsewhere.
func scriptParams(dir string, setup func(*testscript.Env), cmds ...map[string]func(*testscript.TestScript, bool, []string)) testscript.Params {
	all := map[string]func(ts *testscript.TestScript, neg bool, args []string){
		"mode":          cmdMode,
		"env-from-file": cmdEnvFromFile,
		"to-crlf":       cmdToCRLF,
	}
	for _, c := range cmds {
		maps.Copy(all, c)
	}
	return testscript.Params{
		Dir: dir,
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
			// Nor its nix.conf or daemon.
			e.Setenv("NIX_CONF_DIR", filepath.Join(e.WorkDir, ".no-nix-conf"))
			e.Setenv("NIX_REMOTE", "daemon")
			e.Setenv("NIX_DAEMON_SOCKET_PATH", filepath.Join(e.WorkDir, ".no-daemon-socket"))
			if setup != nil {
				setup(e)
			}
			return nil
		},
		Cmds:                all,
		RequireExplicitExec: true,
	}
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
