//go:build harness

package registry

import (
	"bufio"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Any local user tries to hold the registry's lock, so that no client can
// ever be revoked: the lock file this nixcache makes, and the one an older
// nixcache made readable by everyone. Either their open fails or the lock
// they hold is not the one edits take; the revocation goes through.
func TestUnprivilegedUserCannotBlockEdits(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root, to run the attacker as nobody")
	}
	for _, tc := range []struct {
		name  string
		older bool
	}{
		{"lock file made by Edit", false},
		{"lock file left by an older nixcache", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			// nobody can reach the directory, as /var/lib/nixcache.
			for _, d := range []string{filepath.Dir(dir), dir} {
				if err := os.Chmod(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			path := filepath.Join(dir, "clients.toml")
			if tc.older {
				if err := os.WriteFile(path+".lock", nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			k, _ := newKey(t, "")
			if err := Edit(path, true, func(r *Registry) error { return r.Add("build-01", mustParseKey(t, k), "", Pull) }); err != nil {
				t.Fatal(err)
			}
			for _, lock := range []string{path + ".lock", filepath.Join(dir, ".clients.toml.lock")} {
				holdAsNobody(t, lock)
			}

			old := LockTimeout
			LockTimeout = 2 * time.Second
			defer func() { LockTimeout = old }()
			if err := Edit(path, false, func(r *Registry) error { return r.Remove("build-01") }); err != nil {
				t.Fatalf("revoking with nobody at the lock files: %v", err)
			}
			r, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			if len(r.Clients()) != 0 {
				t.Fatal("the client is still registered")
			}
		})
	}
}

// holdAsNobody takes a shared flock on file as user nobody, if nobody can,
// and holds it until the test ends.
func holdAsNobody(t *testing.T, file string) {
	t.Helper()
	attacker := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"flock", "--shared", "--nonblock", file, "sh", "-c", "echo locked; exec sleep 60")
	stdout, err := attacker.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	attacker.Stderr = &stderr
	// The sleep inherits the lock: end the whole group.
	attacker.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := attacker.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { syscall.Kill(-attacker.Process.Pid, syscall.SIGKILL); attacker.Wait() })
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line == "locked\n" {
		t.Logf("nobody holds a shared lock on %s", filepath.Base(file))
	} else {
		attacker.Wait()
		t.Logf("nobody could not lock %s: %s", filepath.Base(file), strings.TrimSpace(stderr.String()))
	}
}
