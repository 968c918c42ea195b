package harness

import (
	"os/exec"
	"syscall"
	"time"
)

// process is a long-running child (nix-daemon, sshd) in a process group of
// its own, so that stopping it also stops what it forked.
type process struct {
	cmd    *exec.Cmd
	exited chan error
}

func startProcess(cmd *exec.Cmd) (*process, error) {
	cmd.SysProcAttr = ownGroup()
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &process{cmd: cmd, exited: make(chan error, 1)}
	go func() { p.exited <- cmd.Wait() }()
	return p, nil
}

// hasExited reports whether the process has ended, and how.
func (p *process) hasExited() (bool, error) {
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

// stop ends the process group by PID: SIGTERM, then SIGKILL after 5s.
// Stopping a stopped process does nothing.
func (p *process) stop() {
	if p == nil {
		return
	}
	if exited, _ := p.hasExited(); exited {
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
