//go:build harness

package integration_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/service"
	"github.com/nixcache/nixcache/tests/harness"
)

// FindDaemon finds the real nix-daemon listening on a socket, when it
// started, and the configuration directory it was started with.
func TestFindDaemon(t *testing.T) {
	d, err := service.FindDaemon(env.Socket)
	if err != nil {
		t.Fatal(err)
	}
	if comm := procFile(t, d.PID, "comm"); comm != "nix-daemon\n" {
		t.Errorf("PID %d is %q, not nix-daemon", d.PID, comm)
	}
	// The harness started it: it is this test's child.
	if ppid := parentPID(t, d.PID); ppid != os.Getpid() {
		t.Errorf("PID %d is a child of %d, not of the test (%d)", d.PID, ppid, os.Getpid())
	}
	if age := time.Since(d.Started); age < 0 || age > 10*time.Minute {
		t.Errorf("the daemon started %v ago", age)
	}
	if d.Env["NIX_CONF_DIR"] != env.ConfDir {
		t.Errorf("the daemon's NIX_CONF_DIR is %q, want %q", d.Env["NIX_CONF_DIR"], env.ConfDir)
	}
	if _, err := service.FindDaemon(env.Socket + ".nothing"); !errors.Is(err, service.ErrNotFound) {
		t.Errorf("a socket nobody listens on: %v", err)
	}
}

// Root inside a user namespace of its own is an ordinary user outside it:
// its nix-daemon is not trusted, whatever its name and socket.
func TestFindDaemonRejectsUserNamespaceRoot(t *testing.T) {
	dir := sharedDir(t)
	socket := filepath.Join(dir, "socket")
	pid, said := startFake(t, socket, []string{"NIX_SSHOPTS=-oProxyCommand=/bin/false"},
		env.OwnRoot(), "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", "unshare", "--user", "--map-root-user")
	if said != "listening as uid 0" {
		t.Fatalf("the fake daemon is not root in its namespace: %q", said)
	}
	if status := procFile(t, pid, "status"); !strings.Contains(status, "\nUid:\t65534\t65534\t65534\t65534\n") {
		t.Fatalf("outside its namespace, the fake daemon's status says:\n%s", status)
	}
	d, err := service.FindDaemon(socket)
	if !errors.Is(err, service.ErrUntrusted) || !strings.Contains(err.Error(), fmt.Sprintf("PID %d, which listened as uid 65534", pid)) {
		t.Fatalf("FindDaemon on a user namespace's root: %+v, %v", d, err)
	}
}

// Sockets bound to the same path in other mount namespaces are not the
// daemon's, even a root one's started earlier: FindDaemon takes the socket
// a client connecting to the path reaches.
func TestFindDaemonTakesTheSocketClientsReach(t *testing.T) {
	dir := sharedDir(t)
	socket := filepath.Join(dir, "socket")
	shadow, _ := startFake(t, socket, []string{"NIX_CONF_DIR=/shadow"},
		env.OwnRoot(), "sh", "-c", `mount -t tmpfs tmpfs "$1" && shift && exec "$@"`, "sh", dir)
	time.Sleep(50 * time.Millisecond)
	stop, err := env.StartDaemon("local", socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(stop)
	d, err := service.FindDaemon(socket)
	if err != nil {
		t.Fatal(err)
	}
	if d.PID == shadow || parentPID(t, d.PID) != os.Getpid() || d.Env["NIX_CONF_DIR"] != env.ConfDir {
		t.Errorf("FindDaemon took PID %d (NIX_CONF_DIR %q), not the daemon this test started; the shadow is %d",
			d.PID, d.Env["NIX_CONF_DIR"], shadow)
	}
}

// Under socket activation the process that listened (systemd) hands the
// socket to the daemon: FindDaemon finds the nix-daemon holding it.
func TestFindDaemonSocketActivated(t *testing.T) {
	socket := filepath.Join(sharedDir(t), "socket")
	// This test plays systemd: it listens, as root, and keeps the socket.
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: socket, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ exec nix-daemon`)
	cmd.Env = append(os.Environ(), "LISTEN_FDS=1", "NIX_CONF_DIR="+env.ConfDir, "NIX_SSHOPTS=-F /activated")
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	c, err := daemon.Dial(ctx, socket)
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	d, err := service.FindDaemon(socket)
	if err != nil {
		t.Fatal(err)
	}
	if d.PID != cmd.Process.Pid || d.Env["NIX_SSHOPTS"] != "-F /activated" {
		t.Errorf("FindDaemon took PID %d (NIX_SSHOPTS %q), want the activated daemon %d", d.PID, d.Env["NIX_SSHOPTS"], cmd.Process.Pid)
	}
}

// startFake runs a copy of this test binary named nix-daemon, listening on
// socket, through the command line wrap (which ends where the program's
// path goes). It returns its PID and the line it printed once listening.
func startFake(t *testing.T, socket string, extraEnv []string, wrap ...string) (int, string) {
	t.Helper()
	program := filepath.Join(sharedDir(t), "nix-daemon")
	if err := harness.CopyTestBinary(program); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(wrap[0], append(wrap[1:], program)...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), harness.FakeDaemonSocket + "=" + socket}, extraEnv...)
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	line, _ := bufio.NewReader(out).ReadString('\n')
	if !strings.HasPrefix(line, "listening") {
		t.Fatalf("the fake nix-daemon did not start: %q", line)
	}
	// The wrappers exec: the PID is the fake daemon's.
	if comm := procFile(t, cmd.Process.Pid, "comm"); comm != "nix-daemon\n" {
		t.Fatalf("PID %d is %q", cmd.Process.Pid, comm)
	}
	return cmd.Process.Pid, strings.TrimSpace(line)
}

// sharedDir is a fresh directory any user may write to.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "find-daemon-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o777); err != nil {
		t.Fatal(err)
	}
	return dir
}

func procFile(t *testing.T, pid int, name string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/%s", pid, name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func parentPID(t *testing.T, pid int) int {
	t.Helper()
	stat := procFile(t, pid, "stat")
	fields := strings.Fields(stat[strings.LastIndexByte(stat, ')')+1:])
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}
