//go:build harness

package e2e

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nixcache/nixcache/tests/harness"
)

// An unprivileged user cannot pass for the machine's daemon: in a user and
// mount namespace of their own they mount a tmpfs over the daemon's socket
// directory and listen on the socket's path from a program named
// nix-daemon, whose environment has ssh run their script, and wait for the
// real daemon to restart (join's restart does that). Root's doctor must
// neither name the impostor as the daemon nor run ssh with its options.
func TestDoctorIgnoresImpostorDaemon(t *testing.T) {
	c := newCache(t, harness.SSHNG)
	m := newMachine(t, debianNixConf, true)
	c.join(t, m)

	// The attacker's files: a program named nix-daemon, and the script
	// their ssh option would have root run, which leaves a marker.
	attacker, err := os.MkdirTemp("", "impostor-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(attacker) })
	if err := os.Chmod(attacker, 0o777); err != nil {
		t.Fatal(err)
	}
	fake := filepath.Join(attacker, "nix-daemon")
	if err := harness.CopyTestBinary(fake); err != nil {
		t.Fatal(err)
	}
	marker := filepath.Join(attacker, "ran-as-root")
	evil := filepath.Join(attacker, "evil.sh")
	if err := os.WriteFile(evil, []byte("#!/bin/sh\nid -u > "+marker+"\nexit 1\n"), 0o755); err != nil {
		t.Fatal(err)
	}

	// As nobody, in namespaces of its own: over the socket's directory a
	// tmpfs (owned by the namespace's root, that is nobody), and in it the
	// impostor's socket at the daemon's path. (Through ownroot: the
	// kernel refuses a user namespace to a chrooted process, and the tests
	// may run in a chroot.)
	cmd := exec.Command(env.OwnRoot(), "setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups",
		"unshare", "--user", "--map-root-user", "--mount",
		"sh", "-c", `mount -t tmpfs tmpfs "$1" && exec "$2"`, "sh", filepath.Dir(m.Socket), fake)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), harness.FakeDaemonSocket + "=" + m.Socket,
		"NIX_SSHOPTS=-oProxyCommand=" + evil, "NIX_CONF_DIR=" + attacker}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		cmd.Wait()
	})
	if line, _ := bufio.NewReader(out).ReadString('\n'); !strings.HasPrefix(line, "listening as uid ") {
		t.Fatalf("the impostor did not start: %q", line)
	}
	fakePID := cmd.Process.Pid
	if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", fakePID)); string(comm) != "nix-daemon\n" {
		t.Fatalf("the impostor is named %q", comm)
	}
	// The real daemon starts after the impostor, as after join's restart.
	time.Sleep(50 * time.Millisecond)
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}

	d := onMachine(m, "client", "doctor")
	if b, err := os.ReadFile(marker); err == nil {
		t.Errorf("doctor ran the impostor's ssh option as uid %s", strings.TrimSpace(string(b)))
	}
	if strings.Contains(d.Stdout, fmt.Sprintf("PID %d ", fakePID)) {
		t.Errorf("doctor took the impostor (PID %d) for the daemon:\n%s", fakePID, d.Stdout)
	}
	// The daemon it names is the one the harness started (a child of this
	// test), reading the machine's nix.conf.
	found := regexp.MustCompile(`✓ daemon: nix-daemon PID (\d+) serves .*, reading "(.*)"`).FindStringSubmatch(d.Stdout)
	if found == nil {
		t.Fatalf("doctor did not find the real daemon:\n%s", d.Stdout)
	}
	if pid, _ := strconv.Atoi(found[1]); parentPID(t, pid) != os.Getpid() || found[2] != m.ConfDir {
		t.Errorf("doctor named PID %s reading %q, not the machine's daemon reading %q:\n%s", found[1], found[2], m.ConfDir, d.Stdout)
	}

	// With the real daemon stopped, only the impostor is left: doctor finds
	// no daemon, and still runs nothing of the impostor's.
	m.Stop()
	d = onMachine(m, "client", "doctor")
	if d.Err == nil || !strings.Contains(d.Stdout, "✗ daemon: ") || strings.Contains(d.Stdout, fmt.Sprintf("PID %d ", fakePID)) {
		t.Errorf("doctor with only the impostor listening: %v\n%s", d.Err, d.Stdout)
	}
	if b, err := os.ReadFile(marker); err == nil {
		t.Errorf("doctor ran the impostor's ssh option as uid %s", strings.TrimSpace(string(b)))
	}
}

func parentPID(t *testing.T, pid int) int {
	t.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	ppid, _ := strconv.Atoi(fields[1])
	return ppid
}
