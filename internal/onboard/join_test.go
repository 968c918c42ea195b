package onboard

import (
	"crypto/ed25519"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// hostile are words an attacker would like the admin's shell to run.
var hostile = []string{
	"", "plain", "b01'$(touch MARK)'", `'`, `''`, `'\''`, `"$(touch MARK)"`, "`touch MARK`",
	"; touch MARK", "a\ntouch MARK", "$HOME ${IFS} $((1+1))", `\`, `\'`, "*", "-c", "a b\tc",
	"\x01\x7f\u00a0é", "!touch MARK", "#comment", "~root", "x&touch MARK&",
}

// Every word survives the real sh as one argument, byte for byte, and
// nothing else runs.
func TestShellQuoteSurvivesSh(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "MARK")
	for _, word := range hostile {
		word = strings.ReplaceAll(word, "MARK", marker)
		out, err := exec.Command("/bin/sh", "-c", "printf '%s\\0' "+shellQuote(word)+" "+shellQuote(word)).Output()
		if err != nil {
			t.Fatalf("sh -c with %q: %v", word, err)
		}
		if want := word + "\x00" + word + "\x00"; string(out) != want {
			t.Errorf("shellQuote(%q) reached the command as %q", word, out)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("a quoted word ran a command")
	}
}

// The admin's line, pasted into sh, runs nixcache with exactly its
// arguments, whatever the machine is called.
func TestAdminCommandRunsOnlyNixcache(t *testing.T) {
	dir := t.TempDir()
	marker := filepath.Join(dir, "MARK")
	bin := filepath.Join(dir, "bin")
	argv := filepath.Join(dir, "argv")
	if err := os.Mkdir(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	fake := "#!/bin/sh\nprintf '%s\\0' \"$@\" > " + shellQuote(argv) + "\n"
	if err := os.WriteFile(filepath.Join(bin, "nixcache"), []byte(fake), 0o755); err != nil {
		t.Fatal(err)
	}
	pub, _, err := ed25519.GenerateKey(nil)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	keyText := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
	for _, machine := range hostile {
		machine = strings.ReplaceAll(machine, "MARK", marker)
		os.Remove(argv)
		line := AdminCommand(machine, key)
		cmd := exec.Command("/bin/sh", "-c", line)
		cmd.Env = []string{"PATH=" + bin + ":/usr/bin:/bin"}
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("sh -c %q: %v\n%s", line, err, out)
		}
		got, err := os.ReadFile(argv)
		if err != nil {
			t.Fatalf("%q did not run nixcache: %v", line, err)
		}
		want := strings.Join([]string{"clients", "add", machine, "--key", keyText + " nixcache@" + machine}, "\x00") + "\x00"
		if string(got) != want {
			t.Errorf("%q ran nixcache with %q, want %q", line, got, want)
		}
	}
	if _, err := os.Stat(marker); err == nil {
		t.Error("the admin's line ran a command of the machine name's")
	}
}

// A name the registry would refuse stops join before it reads anything.
func TestPlanJoinRefusesABadMachineName(t *testing.T) {
	for _, name := range []string{"", "b01'$(id)'", "-rf", "a b", "laptop\n"} {
		_, err := PlanJoin(t.Context(), JoinRequest{Machine: name, Loc: Locations{NixConfDir: "/nonexistent", SSHDir: "/nonexistent"}})
		if _, ok := err.(*MachineNameError); !ok {
			t.Errorf("PlanJoin with machine %q: %v, want a MachineNameError", name, err)
		}
	}
}
