package benchkit

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"strings"
	"time"

	"github.com/nixcache/nixcache/tests/harness"
)

// Service is a long-running child (a nix-daemon, sshd, a publisher): the
// harness's Process, with a name and a log for failure messages.
type Service struct {
	*harness.Process
	Name    string
	LogPath string
}

// StartService starts cmd with its output in logPath.
func StartService(name, logPath string, cmd *exec.Cmd) (*Service, error) {
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd.Stdout, cmd.Stderr = log, log
	p, err := harness.StartProcess(cmd)
	if err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	return &Service{Process: p, Name: name, LogPath: logPath}, nil
}

// Log is what the service logged.
func (s *Service) Log() string {
	b, _ := os.ReadFile(s.LogPath)
	return Tail(string(b))
}

// Stop ends the service and the sessions its children started (sshd's
// per-connection processes call setsid). Stopping a stopped service does
// nothing.
func (s *Service) Stop() {
	if s != nil {
		s.StopSessions()
	}
}

// StartDaemon starts the harness's nix-daemon on socket with env
// (NIX_CONF_DIR among it) and extra arguments, and waits until it answers
// the handshake.
func StartDaemon(e *harness.Env, env []string, socket string, args ...string) (*Service, error) {
	logPath := socket + ".log"
	p, err := e.StartDaemonWith(env, socket, logPath, args...)
	if err != nil {
		return nil, err
	}
	return &Service{Process: p, Name: "nix-daemon", LogPath: logPath}, nil
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
