package harness

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a long-running child (nix-daemon, sshd, a publisher) in a
// process group of its own, so that stopping it also stops what it forked.
// The benchmarks (tests/bench) start theirs with it too.
type Process struct {
	cmd    *exec.Cmd
	exited chan error
}

// StartProcess starts cmd in a process group of its own.
func StartProcess(cmd *exec.Cmd) (*Process, error) {
	cmd.SysProcAttr = ownGroup()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &Process{cmd: cmd, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	return p, nil
}

// Exited reports whether the process has ended, and how.
func (p *Process) Exited() (bool, error) {
	select {
	case err := <-p.exited:
		p.exited <- err
		return true, err
	default:
		return false, nil
	}
}

// ownGroup puts a child in a process group of its own, and has the kernel
// end it if the test binary dies without cleaning up (a -timeout panic).
func ownGroup() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
}

// Stop ends the process group by PID: SIGTERM, then SIGKILL after 5s.
// Stopping a stopped process does nothing.
func (p *Process) Stop() {
	if p == nil {
		return
	}
	if exited, _ := p.Exited(); exited {
		return
	}
	pid := p.cmd.Process.Pid
	syscall.Kill(-pid, syscall.SIGTERM)
	var err error
	select {
	case err = <-p.exited:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pid, syscall.SIGKILL)
		err = <-p.exited
	}
	p.exited <- err
}

// StopSessions stops the process and, first, the sessions its children
// started: each connection's sshd calls setsid(), so stopping sshd's
// process group alone would leave them running.
func (p *Process) StopSessions() {
	if p == nil {
		return
	}
	if exited, _ := p.Exited(); !exited {
		for _, child := range children(p.cmd.Process.Pid) {
			// A session leader: its group is the connection's processes.
			syscall.Kill(-child, syscall.SIGKILL)
			syscall.Kill(child, syscall.SIGKILL)
		}
	}
	p.Stop()
}

// children are the PIDs whose parent is pid.
func children(pid int) []int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	var out []int
	for _, f := range stats {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		// The fields after the command's name, which ends at the last ')'.
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			child, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			out = append(out, child)
		}
	}
	return out
}
