package benchkit

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nixcache/nixcache/internal/daemon"
)

// Service is a long-running child (a nix-daemon, sshd, a publisher) in a
// process group of its own, so that stopping it also stops what it forked.
type Service struct {
	Name    string
	LogPath string
	cmd     *exec.Cmd
	exited  chan error
}

// StartService starts cmd with its output in logPath.
func StartService(name, logPath string, cmd *exec.Cmd) (*Service, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	s := &Service{Name: name, LogPath: logPath, cmd: cmd, exited: make(chan error, 1)}
	go func() { s.exited <- cmd.Wait() }()
	return s, nil
}

// Exited reports whether the service has ended, and how.
func (s *Service) Exited() (bool, error) {
	select {
	case err := <-s.exited:
		s.exited <- err
		return true, err
	default:
		return false, nil
	}
}

// Log is what the service logged.
func (s *Service) Log() string {
	b, _ := os.ReadFile(s.LogPath)
	return Tail(string(b))
}

// Stop ends the process group by PID, and the sessions its children
// started (sshd's per-connection processes call setsid): SIGTERM, then
// SIGKILL after 5 s. Stopping a stopped service does nothing.
func (s *Service) Stop() {
	if s == nil {
		return
	}
	if exited, _ := s.Exited(); exited {
		return
	}
	pid := s.cmd.Process.Pid
	for _, child := range children(pid) {
		syscall.Kill(-child, syscall.SIGKILL)
		syscall.Kill(child, syscall.SIGKILL)
	}
	syscall.Kill(-pid, syscall.SIGTERM)
	var err error
	select {
	case err = <-s.exited:
	case <-time.After(5 * time.Second):
		syscall.Kill(-pid, syscall.SIGKILL)
		err = <-s.exited
	}
	s.exited <- err
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
		fields := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			child, _ := strconv.Atoi(filepath.Base(filepath.Dir(f)))
			out = append(out, child)
		}
	}
	return out
}

// StartDaemon starts nix-daemon through ownroot (see tests/harness/ownroot)
// on socket with env (NIX_CONF_DIR among it) and extra arguments, and waits
// until it answers the handshake.
func StartDaemon(ownroot string, env []string, socket string, args ...string) (*Service, error) {
	cmd := exec.Command(ownroot, append([]string{"nix-daemon"}, args...)...)
	cmd.Env = append(env, "NIX_DAEMON_SOCKET_PATH="+socket)
	s, err := StartService("nix-daemon", socket+".log", cmd)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	for {
		c, err := daemon.Dial(ctx, socket)
		if err == nil {
			return s, c.Close()
		}
		if exited, werr := s.Exited(); exited {
			return nil, fmt.Errorf("nix-daemon exited at start (%v):\n%s", werr, s.Log())
		}
		if ctx.Err() != nil {
			s.Stop()
			return nil, fmt.Errorf("nix-daemon did not answer on %s: %v\n%s", socket, err, s.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// WaitSSH waits until sshd at addr sends its banner.
func WaitSSH(s *Service, addr string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if exited, err := s.Exited(); exited {
			return fmt.Errorf("sshd exited at start (%v):\n%s", err, s.Log())
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.SetDeadline(time.Now().Add(5 * time.Second))
			banner, _ := bufio.NewReader(c).ReadString('\n')
			c.Close()
			if strings.HasPrefix(banner, "SSH-2.0-") {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("sshd did not answer within 20s:\n%s", s.Log())
}

// WaitSocket waits until something accepts connections on the Unix socket.
func WaitSocket(s *Service, socket string) error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if exited, err := s.Exited(); exited {
			return fmt.Errorf("%s exited at start (%v):\n%s", s.Name, err, s.Log())
		}
		if c, err := net.DialTimeout("unix", socket, time.Second); err == nil {
			return c.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not listen on %s within 20s:\n%s", s.Name, socket, s.Log())
}
