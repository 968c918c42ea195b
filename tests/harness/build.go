package harness

import (
	"fmt"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
)

// closureExpr builds a chain of n input-addressed paths, each referring to
// the one before, with a builder that needs nothing but /bin/sh.
const closureExpr = `{ nonce, n }:
let
  step = i: prev: derivation {
    name = "nixcache-test-${toString i}";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "echo ${nonce} ${prev} > $out" ];
  };
  chain = i: if i == 0 then "" else step i (chain (i - 1));
in chain n
`

// Closure is a set of paths built into the server's store.
type Closure struct {
	// Top refers, directly or not, to every other path.
	Top string
	// Paths is the whole closure, Top included.
	Paths []string
}

// Build builds a fresh closure of n paths through the private daemon.
func (e *Env) Build(n int) (Closure, error) {
	r := Run(e.Environ(), "nix-build", "--no-out-link", "--quiet", e.closureExpr(),
		"--argstr", "nonce", Nonce(), "--arg", "n", strconv.Itoa(n))
	if r.Err != nil {
		return Closure{}, r.Err
	}
	top := strings.TrimSpace(r.Stdout)
	r = Run(e.Environ(), "nix-store", "--query", "--requisites", top)
	if r.Err != nil {
		return Closure{}, r.Err
	}
	paths := strings.Fields(r.Stdout)
	if len(paths) != n {
		return Closure{}, fmt.Errorf("built %s with %d paths in its closure, want %d", top, len(paths), n)
	}
	return Closure{Top: top, Paths: paths}, nil
}

func (e *Env) closureExpr() string { return filepath.Join(e.Dir, "closure.nix") }

// BuildNixcache builds the nixcache command into the Env's directory, which
// every user may read, and returns its path.
func (e *Env) BuildNixcache() (string, error) { return BuildNixcache(e.Dir) }

// Nixcache is the nixcache command built once for the Env (the dispatcher
// sshd runs for the Nixcache protocol).
func (e *Env) Nixcache() (string, error) {
	e.nixcacheOnce.Do(func() { e.nixcache, e.nixcacheErr = e.BuildNixcache() })
	return e.nixcache, e.nixcacheErr
}

// BuildNixcache builds the nixcache command into dir and returns its path,
// for tests that need no Env.
func BuildNixcache(dir string) (string, error) {
	bin := filepath.Join(dir, "nixcache")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/nixcache/nixcache/cmd/nixcache").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("building nixcache: %v\n%s", err, out)
	}
	return bin, nil
}
