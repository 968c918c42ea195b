//go:build harness

package integration_test

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nixcache/nixcache/internal/service"
)

// FindDaemon finds the real nix-daemon listening on a socket, when it
// started, and the configuration directory it was started with.
func TestFindDaemon(t *testing.T) {
	d, err := service.FindDaemon(env.Socket)
	if err != nil {
		t.Fatal(err)
	}
	comm, err := os.ReadFile("/proc/" + strconv.Itoa(d.PID) + "/comm")
	if err != nil || strings.TrimSpace(string(comm)) != "nix-daemon" {
		t.Errorf("PID %d is %q, not nix-daemon (%v)", d.PID, comm, err)
	}
	if age := time.Since(d.Started); age < 0 || age > 10*time.Minute {
		t.Errorf("the daemon started %v ago", age)
	}
	if d.Env["NIX_CONF_DIR"] != env.ConfDir {
		t.Errorf("the daemon's NIX_CONF_DIR is %q, want %q", d.Env["NIX_CONF_DIR"], env.ConfDir)
	}
	if _, err := service.FindDaemon(env.Socket + ".nothing"); err != service.ErrNotFound {
		t.Errorf("a socket nobody listens on: %v", err)
	}
}
