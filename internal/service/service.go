// Package service finds and restarts the Nix daemon through the platform's
// service manager (systemd on Linux, launchd on macOS), and reads what the
// running daemon was started with.
package service

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
)

// Manager restarts the Nix daemon.
type Manager struct {
	Name string
	// Restart is the command that restarts the daemon.
	Restart []string
}

// Command is Restart as a shell command line, for users to run.
func (m *Manager) Command() string { return strings.Join(m.Restart, " ") }

// Run restarts the daemon.
func (m *Manager) Run() error { return Run(m.Restart) }

// Run runs a service manager's command (argv), with what it said when it
// fails.
func Run(argv []string) error {
	out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s: %v: %s", strings.Join(argv, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// ErrNoManager says no known service manager runs the daemon here.
var ErrNoManager = errors.New("no service manager found for the Nix daemon (neither systemd nor launchd)")

// launchdLabels are the daemon's launchd jobs: the Nix installer's and
// Determinate Nix's.
var launchdLabels = []string{"org.nixos.nix-daemon", "systems.determinate.nix-daemon"}

// Detect finds the service manager that runs the Nix daemon.
func Detect() (*Manager, error) {
	switch runtime.GOOS {
	case "linux":
		// What sd_booted() checks: systemd is the running init.
		if st, err := os.Stat("/run/systemd/system"); err == nil && st.IsDir() {
			if _, err := exec.LookPath("systemctl"); err == nil {
				return Systemd(), nil
			}
		}
	case "darwin":
		for _, label := range launchdLabels {
			if exec.Command("launchctl", "print", "system/"+label).Run() == nil {
				return Launchd(label), nil
			}
		}
	}
	return nil, ErrNoManager
}

// Systemd restarts nix-daemon.service (its socket unit stays up, so clients
// that connect meanwhile wait rather than fail).
func Systemd() *Manager {
	return &Manager{"systemd", []string{"systemctl", "restart", "nix-daemon.service"}}
}

// Launchd restarts the launchd job label.
func Launchd(label string) *Manager {
	return &Manager{"launchd", []string{"launchctl", "kickstart", "-k", "system/" + label}}
}

// ByName is the manager named on the command line: "auto" detects it.
func ByName(name string) (*Manager, error) {
	switch name {
	case "", "auto":
		return Detect()
	case "systemd":
		return Systemd(), nil
	case "launchd":
		for _, label := range launchdLabels {
			if exec.Command("launchctl", "print", "system/"+label).Run() == nil {
				return Launchd(label), nil
			}
		}
		return Launchd(launchdLabels[0]), nil
	case "none":
		return nil, ErrNoManager
	}
	return nil, fmt.Errorf("unknown service manager %q: use auto, systemd, launchd or none", name)
}
