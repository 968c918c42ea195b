// Package nixos_test checks the parts of the NixOS side that run without
// NixOS or nixpkgs: the server module's registry rendering (plain builtins,
// evaluated by the real nix-instantiate) against the real CLI, the VM
// test's committed registries, and the flake's nixpkgs pin. The modules
// themselves are evaluated by tests/nixos/eval.nix (scripts/eval-modules.sh,
// and `nix flake check`); the VM test runs under `nix flake check` only.
package nixos_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/tests/harness"
)

// The store paths the module puts in command=, as on a NixOS server.
const (
	nixStore        = "/nix/store/0c7bz0ivs6asxa1dwcj2ir6ir3fqx1mr-nix-2.28.4/bin/nix-store"
	nixDaemon       = "/nix/store/0c7bz0ivs6asxa1dwcj2ir6ir3fqx1mr-nix-2.28.4/bin/nix-daemon"
	nixcacheProgram = "/nix/store/1d8cz1jwt7bt8b2exk3js7js8gr4ny2n-nixcache-0.1.0/bin/nixcache"
)

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	r := harness.Run(os.Environ(), name, args...)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	return r.Stdout
}

var nixcache string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "nixcache-nixos-test-")
	if err != nil {
		panic(err)
	}
	code := 1
	if nixcache, err = harness.BuildNixcache(dir); err != nil {
		fmt.Fprintln(os.Stderr, err)
	} else {
		code = m.Run()
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// moduleHeader stands for the server module's own first lines.
const moduleHeader = "# rendered by nixos/registry.nix\n"

// moduleRender evaluates nixos/registry.nix as the server module does: the
// registry file's clients, rendered as authorized_keys lines for protocol
// with command (for the dispatcher, "nixcache", followed by --client NAME,
// as the server module writes it) and as the registry file the dispatcher
// reads.
func moduleRender(t *testing.T, registry, protocol, command string) (lines []string, toml string, problems []string) {
	t.Helper()
	abs, err := filepath.Abs(registry)
	if err != nil {
		t.Fatal(err)
	}
	registryNix, err := filepath.Abs("../../nixos/registry.nix")
	if err != nil {
		t.Fatal(err)
	}
	const expr = `{ registryNix, file, protocol, command }:
let
  r = import (/. + registryNix);
  m = r.merge [ (r.readFile (/. + file)) ];
in {
  inherit (m) problems;
  lines = r.authorizedKeys {
    inherit (m) clients;
    inherit protocol;
    command = name: if protocol == "nixcache" then "${command} --client ${name}" else command;
  };
  toml = r.toTOML { inherit (m) clients; header = "# rendered by nixos/registry.nix\n"; };
}`
	exprFile := filepath.Join(t.TempDir(), "eval.nix")
	if err := os.WriteFile(exprFile, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	// dummy://: evaluation needs no store, so no daemon and no root.
	out := run(t, "nix-instantiate", "--option", "store", "dummy://", "--eval", "--strict", "--json", exprFile,
		"--argstr", "registryNix", registryNix, "--argstr", "file", abs, "--argstr", "protocol", protocol, "--argstr", "command", command)
	var v struct {
		Problems, Lines []string
		TOML            string
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("decoding %s: %v", out, err)
	}
	return v.Lines, v.TOML, v.Problems
}

// listed is what `nixcache clients list --json` reads from registry.
func listed(t *testing.T, registry string) string {
	t.Helper()
	return run(t, nixcache, "clients", "list", "--json", "--registry", registry)
}

// cliLines is what `nixcache clients authorized-keys` renders, without its
// header comment.
func cliLines(t *testing.T, registry, protocol, program string) []string {
	t.Helper()
	out := run(t, nixcache, "clients", "authorized-keys", "--registry", registry,
		"--protocol", protocol, "--serve-command", program)
	var lines []string
	for _, l := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		if !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	return lines
}

func newKey(t *testing.T, dir, name, comment string) string {
	t.Helper()
	path := filepath.Join(dir, name)
	run(t, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path)
	data, err := os.ReadFile(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(data))
}

func TestModuleRendersWhatTheCLIRenders(t *testing.T) {
	dir := t.TempDir()
	fresh := filepath.Join(dir, "clients.toml")
	// A registry as an admin grows it: several clients, comments from the
	// keys and from --comment, added out of order, one of them push.
	for _, c := range []struct{ name, keyComment, comment, role string }{
		{"zz-last", "root@zz", "", ""},
		{"build-01", "root@build-01", "CI runner", "push"},
		{"a.laptop_2", "", "Ana's \"laptop\"", "pull"},
		{"c", "", `C:\Users\ana ünïcode € 'x' #1 = [t]`, ""},
	} {
		key := newKey(t, dir, c.name, c.keyComment)
		args := []string{"clients", "add", "--registry", fresh, "--key", key}
		if c.comment != "" {
			args = append(args, "--comment", c.comment)
		}
		if c.role != "" {
			args = append(args, "--role", c.role)
		}
		run(t, nixcache, append(args, c.name)...)
	}
	// The same clients once no one is push: version 1 again.
	demoted := filepath.Join(dir, "demoted.toml")
	copyFile(t, fresh, demoted)
	run(t, nixcache, "clients", "set-role", "--registry", demoted, "build-01", "pull")

	for _, registry := range []string{fresh, demoted, "registry.toml", "registry-revoked.toml"} {
		for _, p := range []struct{ protocol, program, command string }{
			{"ssh", nixStore, nixStore + " --serve"},
			{"ssh-ng", nixDaemon, nixDaemon + " --stdio"},
			{"nixcache", nixcacheProgram, nixcacheProgram + " serve"},
		} {
			want := cliLines(t, registry, p.protocol, p.program)
			got, _, problems := moduleRender(t, registry, p.protocol, p.command)
			if len(problems) > 0 {
				t.Errorf("%s: the module refuses what the CLI wrote: %q", registry, problems)
			}
			if !slices.Equal(got, want) {
				t.Errorf("%s, %s: the module renders\n%s\nthe CLI renders\n%s", registry, p.protocol,
					strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
		}
	}
}

// The registry file the server module writes for `nixcache serve` is what
// `nixcache clients` writes for the same clients, below the module's own
// header, and the CLI reads the same clients from it.
func TestModuleWritesTheRegistryTheCLIReads(t *testing.T) {
	dir := t.TempDir()
	fresh := filepath.Join(dir, "clients.toml")
	for _, c := range []struct{ name, comment, role string }{
		{"zz-last", "", "push"},
		{"a.laptop_2", `Ana's "laptop" \ C:\Users`, ""},
		{"b", "ünïcode € 'x' #1 = [t] \\u0041", "push"},
		{"build.01", "x", "pull"},
	} {
		args := []string{"clients", "add", "--registry", fresh, "--key", newKey(t, dir, c.name, "")}
		if c.comment != "" {
			args = append(args, "--comment", c.comment)
		}
		if c.role != "" {
			args = append(args, "--role", c.role)
		}
		run(t, nixcache, append(args, c.name)...)
	}
	demoted := filepath.Join(dir, "demoted.toml")
	copyFile(t, fresh, demoted)
	run(t, nixcache, "clients", "set-role", "--registry", demoted, "zz-last", "pull")
	run(t, nixcache, "clients", "set-role", "--registry", demoted, "b", "pull")
	for _, registry := range []string{fresh, demoted, "registry.toml", "registry-revoked.toml"} {
		_, toml, problems := moduleRender(t, registry, "ssh", "unused")
		if len(problems) > 0 {
			t.Errorf("%s: the module refuses what the CLI wrote: %q", registry, problems)
		}
		cli, err := os.ReadFile(registry)
		if err != nil {
			t.Fatal(err)
		}
		_, body, _ := strings.Cut(string(cli), "\n")
		if toml != moduleHeader+body {
			t.Errorf("%s: the module writes\n%s\nthe CLI writes\n%s", registry, toml, cli)
		}
		rendered := filepath.Join(dir, "rendered.toml")
		if err := os.WriteFile(rendered, []byte(toml), 0o644); err != nil {
			t.Fatal(err)
		}
		if got, want := listed(t, rendered), listed(t, registry); got != want {
			t.Errorf("%s: nixcache clients list reads\n%s\nfrom what the module writes, and\n%s\nfrom the registry", registry, got, want)
		}
	}
}

// What the CLI refuses, the module refuses: a newer version, a role in a
// version 1 file, a role that is neither pull nor push.
func TestModuleRefusesWhatTheCLIRefuses(t *testing.T) {
	dir := t.TempDir()
	key := newKey(t, dir, "k", "")
	for _, tc := range []struct{ name, text, problem string }{
		{"newer", "version = 3\n\n[clients.a]\nkey = \"" + key + "\"\nroles = [\"push\"]\n",
			"registry version 3 is not one this module reads (1 or 2)"},
		{"role in version 1", "version = 1\n\n[clients.a]\nkey = \"" + key + "\"\nrole = \"push\"\n",
			`client "a" has a role, which needs version = 2; the file says version = 1`},
		{"unknown role", "version = 2\n\n[clients.a]\nkey = \"" + key + "\"\nrole = \"admin\"\n",
			`the role of client "a" is "admin": use "pull" or "push"`},
		{"role not a string", "version = 2\n\n[clients.a]\nkey = \"" + key + "\"\nrole = [\"push\"]\n",
			`the role of client "a" is not a string: use "pull" or "push"`},
	} {
		registry := filepath.Join(dir, tc.name+".toml")
		if err := os.WriteFile(registry, []byte(tc.text), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, protocol := range []string{"ssh", "nixcache"} {
			lines, _, problems := moduleRender(t, registry, protocol, nixStore+" --serve")
			if len(lines) != 0 || len(problems) != 1 || !strings.Contains(problems[0], tc.problem) {
				t.Errorf("%s: lines %q, problems %q; want no lines and %q", tc.name, lines, problems, tc.problem)
			}
		}
		cmd := exec.Command(nixcache, "clients", "list", "--registry", registry)
		if out, err := cmd.CombinedOutput(); err == nil {
			t.Errorf("%s: nixcache clients list read it:\n%s", tc.name, out)
		}
	}
}

// The server module's inline clients may leave the role out (pull), or
// give it as the clients.<name>.role option does; what it renders is what
// the CLI renders for the same clients.
func TestModuleInlineRoles(t *testing.T) {
	dir := t.TempDir()
	keys := map[string]string{}
	registry := filepath.Join(dir, "clients.toml")
	for _, c := range []struct{ name, role string }{{"a", "push"}, {"b", "pull"}, {"c", "pull"}} {
		keys[c.name] = newKey(t, dir, c.name, "")
		run(t, nixcache, "clients", "add", "--registry", registry, "--key", keys[c.name], "--role", c.role, c.name)
	}
	registryNix, err := filepath.Abs("../../nixos/registry.nix")
	if err != nil {
		t.Fatal(err)
	}
	const expr = `{ registryNix, a, b, c, command }:
let
  r = import (/. + registryNix);
  m = r.merge [ (r.normalise "inline" {
    a = { key = a; role = "push"; };
    b = { key = b; role = "pull"; };
    c = { key = c; };
  }) ];
in {
  inherit (m) problems;
  lines = r.authorizedKeys { inherit (m) clients; command = name: "${command} --client ${name}"; };
  toml = r.toTOML { inherit (m) clients; header = "# rendered by nixos/registry.nix\n"; };
}`
	exprFile := filepath.Join(dir, "inline.nix")
	if err := os.WriteFile(exprFile, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	out := run(t, "nix-instantiate", "--option", "store", "dummy://", "--eval", "--strict", "--json", exprFile,
		"--argstr", "registryNix", registryNix, "--argstr", "a", keys["a"], "--argstr", "b", keys["b"], "--argstr", "c", keys["c"],
		"--argstr", "command", nixcacheProgram+" serve")
	var v struct {
		Problems, Lines []string
		TOML            string
	}
	if err := json.Unmarshal([]byte(out), &v); err != nil {
		t.Fatalf("decoding %s: %v", out, err)
	}
	if len(v.Problems) > 0 {
		t.Errorf("problems: %q", v.Problems)
	}
	// The server module's call names no protocol: the dispatcher's lines.
	if want := cliLines(t, registry, "nixcache", nixcacheProgram); !slices.Equal(v.Lines, want) {
		t.Errorf("the module renders\n%s\nthe CLI renders\n%s", strings.Join(v.Lines, "\n"), strings.Join(want, "\n"))
	}
	cli, err := os.ReadFile(registry)
	if err != nil {
		t.Fatal(err)
	}
	// The keys' own comments are dropped by both.
	_, body, _ := strings.Cut(string(cli), "\n")
	if v.TOML != moduleHeader+body {
		t.Errorf("the module writes\n%s\nthe CLI writes\n%s", v.TOML, cli)
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		t.Fatal(err)
	}
}

// The VM test's registries are what the CLI makes from the test keys.
func TestCommittedRegistriesAreTheCLIs(t *testing.T) {
	dir := t.TempDir()
	registry := filepath.Join(dir, "clients.toml")
	for _, name := range []string{"client", "build-02"} {
		key, err := os.ReadFile(filepath.Join("test-keys", name+"_ed25519.pub"))
		if err != nil {
			t.Fatal(err)
		}
		run(t, nixcache, "clients", "add", "--registry", registry, "--key", strings.TrimSpace(string(key)), name)
	}
	compare := func(committed string) {
		t.Helper()
		want, err := os.ReadFile(registry)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(committed)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s differs from what nixcache clients writes:\n%s\nwant:\n%s", committed, got, want)
		}
	}
	compare("registry.toml")
	run(t, nixcache, "clients", "remove", "--registry", registry, "client")
	compare("registry-revoked.toml")
}

// The pin we were given for nixos-26.05 (a real flake.lock node; it cannot
// be recomputed offline).
var nixpkgsPin = map[string]any{
	"lastModified": float64(1787101114),
	"narHash":      "sha256-gwrPcFf/rDjHPaVflbDZ040ZDmBTRj/7+s8ZmE2SaIM=",
	"owner":        "NixOS",
	"repo":         "nixpkgs",
	"rev":          "b18a4b905f8d028dc4476412e6d6891728695379",
	"type":         "github",
}

func TestFlakeLockPinsNixpkgs(t *testing.T) {
	data, err := os.ReadFile("../../flake.lock")
	if err != nil {
		t.Fatal(err)
	}
	var lock struct {
		Version int
		Root    string
		Nodes   map[string]struct {
			Inputs   map[string]string
			Locked   map[string]any
			Original map[string]any
		}
	}
	if err := json.Unmarshal(data, &lock); err != nil {
		t.Fatal(err)
	}
	if lock.Version != 7 {
		t.Errorf("flake.lock version %d, want 7", lock.Version)
	}
	root := lock.Nodes[lock.Root]
	if len(root.Inputs) != 1 {
		t.Errorf("the flake has inputs %v; want nixpkgs alone", root.Inputs)
	}
	node := lock.Nodes[root.Inputs["nixpkgs"]]
	for k, want := range nixpkgsPin {
		if node.Locked[k] != want {
			t.Errorf("locked %s = %v, want %v", k, node.Locked[k], want)
		}
	}
	if len(node.Locked) != len(nixpkgsPin) {
		t.Errorf("locked has %d fields, want %d: %v", len(node.Locked), len(nixpkgsPin), node.Locked)
	}
	wantOriginal := map[string]any{"owner": "NixOS", "repo": "nixpkgs", "ref": "nixos-26.05", "type": "github"}
	for k, want := range wantOriginal {
		if node.Original[k] != want {
			t.Errorf("original %s = %v, want %v", k, node.Original[k], want)
		}
	}
	flake, err := os.ReadFile("../../flake.nix")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(flake, []byte(`inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";`)) {
		t.Error("flake.nix does not take nixpkgs from github:NixOS/nixpkgs/nixos-26.05, the locked branch")
	}
}
