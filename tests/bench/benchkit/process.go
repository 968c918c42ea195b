package benchkit

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nixcache/nixcache/tests/harness"
)

// RunLong is harness.Run with a longer bound, for builds and signing.
func RunLong(env []string, timeout time.Duration, name string, args ...string) harness.Result {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if err != nil {
		err = fmt.Errorf("%s %s: %w\nstderr:\n%s", name, strings.Join(args, " "), err, Tail(errb.String()))
	}
	return harness.Result{Stdout: out.String(), Stderr: errb.String(), Err: err}
}

// Timed runs a command (a substitution, an upload) in a process group of
// its own and times it.
// With hangAfter > 0, a run that has started no ssh process by then is
// taken to be Nix's SSHMaster deadlock: the processes of the group and
// where each sleeps in the kernel are reported, and the group is killed.
// The group is always killed at the end, for any ssh master left behind.
func Timed(env []string, timeout, hangAfter time.Duration, name string, args ...string) (stdout string, d time.Duration, hung string, err error) {
	cmd := exec.Command(name, args...)
	cmd.Env = env
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return "", 0, "", err
	}
	pgid := cmd.Process.Pid
	defer syscall.Kill(-pgid, syscall.SIGKILL)
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	sawSSH := false
	for {
		select {
		case err := <-exited:
			d = time.Since(start)
			if err != nil {
				return out.String(), d, "", fmt.Errorf("%s %s: %w\nstderr:\n%s", name, strings.Join(args, " "), err, Tail(errb.String()))
			}
			return out.String(), d, "", nil
		case <-tick.C:
			procs := group(pgid)
			for _, p := range procs {
				if p.comm == "ssh" {
					sawSSH = true
				}
			}
			elapsed := time.Since(start)
			if hangAfter > 0 && !sawSSH && elapsed > hangAfter {
				var desc []string
				for _, p := range procs {
					desc = append(desc, fmt.Sprintf("pid %d %s (parent %d) sleeping in %s", p.pid, p.comm, p.ppid, p.wchan))
				}
				hung = fmt.Sprintf("no ssh process started in %v; processes: %s; stderr: %q", hangAfter, strings.Join(desc, "; "), strings.TrimSpace(Tail(errb.String())))
				syscall.Kill(-pgid, syscall.SIGKILL)
				<-exited
				return out.String(), elapsed, hung, nil
			}
			if elapsed > timeout {
				syscall.Kill(-pgid, syscall.SIGKILL)
				<-exited
				return out.String(), elapsed, "", fmt.Errorf("%s timed out after %v (ssh seen: %v)\nstderr:\n%s", name, timeout, sawSSH, Tail(errb.String()))
			}
		}
	}
}

type proc struct {
	pid, ppid   int
	comm, wchan string
}

// group lists the processes of a process group from /proc.
func group(pgid int) []proc {
	entries, _ := os.ReadDir("/proc")
	var out []proc
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid pgrp ...; comm may hold spaces.
		s := string(stat)
		open, close := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || close < open {
			continue
		}
		f := strings.Fields(s[close+1:])
		if len(f) < 3 {
			continue
		}
		if g, _ := strconv.Atoi(f[2]); g != pgid {
			continue
		}
		ppid, _ := strconv.Atoi(f[1])
		wchan, _ := os.ReadFile(filepath.Join("/proc", e.Name(), "wchan"))
		out = append(out, proc{pid: pid, ppid: ppid, comm: s[open+1 : close], wchan: string(wchan)})
	}
	return out
}

// RemoveAll removes a client directory; a chroot store has read-only
// directories, so it makes everything writable first.
func RemoveAll(dir string) {
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			os.Chmod(p, 0o755)
		}
		return nil
	})
	if err := os.RemoveAll(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		fmt.Fprintln(os.Stderr, "bench: cleaning up:", err)
	}
}

// Tail is the last 20 lines of s.
func Tail(s string) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-20):], "\n")
}
