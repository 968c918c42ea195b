package harness

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nixcache/nixcache/internal/atomicfile"
)

// Protocol is how the cache account serves the store, as in NixOS's
// nix.sshServe.protocol.
type Protocol string

const (
	// SSH is the legacy serve protocol: ForceCommand nix-store --serve.
	SSH Protocol = "ssh"
	// SSHNG is the worker protocol over SSH: ForceCommand nix-daemon --stdio.
	SSHNG Protocol = "ssh-ng"
	// Nixcache is nixcache's own: ForceCommand nixcache serve, which knows
	// the client from ExposeAuthInfo and the server's Registry, and serves
	// the binary-cache channel and, read-only, nix-store --serve.
	Nixcache Protocol = "nixcache"
)

// CacheUser is the account clients log in as, as on NixOS.
const CacheUser = "nix-ssh"

// Server is sshd on a loopback port serving the store to CacheUser.
type Server struct {
	Protocol Protocol
	Dir      string
	Port     int
	// HostKey is the server's public host key, "ssh-ed25519 AAAA...".
	HostKey string

	// Publisher is the cache's publisher, for a server that takes uploads
	// (StartUploadServer); nil otherwise.
	Publisher *Publisher

	authorizedKeys string
	publishMode    string
	sshd           *Process
	env            *Env
}

// forceCommand is what nixpkgs' nix-ssh-serve.nix generates for protocol,
// with read-only serving (no --write), or nixcache's dispatcher.
func (s *Server) forceCommand() (string, error) {
	nixStore, err := exec.LookPath("nix-store")
	if err != nil {
		return "", err
	}
	switch s.Protocol {
	case SSHNG:
		nixDaemon, err := exec.LookPath("nix-daemon")
		return nixDaemon + " --stdio", err
	case Nixcache:
		nixcache, err := s.env.Nixcache()
		command := fmt.Sprintf("%s serve --registry %s --nix-store %s", nixcache, s.Registry(), nixStore)
		if s.Publisher != nil {
			command += fmt.Sprintf(" --publisher %s --publish-mode %s --roots %s", s.Publisher.Socket, s.publishMode, s.Publisher.Roots)
		}
		return command, err
	}
	return nixStore + " --serve", nil
}

// Registry is the clients registry the Nixcache protocol's dispatcher reads.
func (s *Server) Registry() string { return filepath.Join(s.Dir, "clients.toml") }

// StartServer starts sshd for a cache served with protocol p. No client is
// authorized until Authorize is called.
func (e *Env) StartServer(p Protocol) (*Server, error) {
	s, err := e.newServer(p)
	if err != nil {
		return nil, err
	}
	if err := s.start(e, s.hostKeyFile()); err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// newServer prepares a server's directory, host key and port.
func (e *Env) newServer(p Protocol) (*Server, error) {
	dir, err := os.MkdirTemp(e.Dir, "sshd-")
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	s := &Server{Protocol: p, Dir: dir, authorizedKeys: filepath.Join(dir, "authorized_keys", CacheUser), env: e}
	if err := os.Mkdir(filepath.Dir(s.authorizedKeys), 0o755); err != nil {
		return nil, err
	}
	if err := s.Authorize(); err != nil {
		return nil, err
	}
	if err := s.newHostKey(); err != nil {
		return nil, err
	}
	// A port taken between this probe and sshd's bind makes sshd exit,
	// which waitReady reports; tests then fail loudly rather than hang.
	if s.Port, err = freePort(); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *Server) hostKeyFile() string { return filepath.Join(s.Dir, "ssh_host_ed25519_key") }

// newHostKey makes a fresh host key and sets HostKey.
func (s *Server) newHostKey() error {
	path := s.hostKeyFile()
	os.Remove(path)
	os.Remove(path + ".pub")
	if r := Run(s.env.Environ(), "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "", "-f", path); r.Err != nil {
		return r.Err
	}
	pub, err := os.ReadFile(path + ".pub")
	if err != nil {
		return err
	}
	s.HostKey = strings.Join(strings.Fields(string(pub))[:2], " ")
	return nil
}

// ReplaceHostKey restarts sshd on the same port with a new host key, as a
// reinstalled server (or one in the middle) would present.
func (s *Server) ReplaceHostKey() error {
	s.sshd.Stop()
	if err := s.newHostKey(); err != nil {
		return err
	}
	return s.start(s.env, s.hostKeyFile())
}

func (s *Server) start(e *Env, hostKey string) error {
	force, err := s.forceCommand()
	if err != nil {
		return err
	}
	sshd, err := exec.LookPath("sshd")
	if err != nil {
		return err
	}
	cfg := fmt.Sprintf(`Port %d
ListenAddress 127.0.0.1
HostKey %s
PidFile none
AuthorizedKeysFile %s/authorized_keys/%%u
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin no
AllowUsers %s
LogLevel VERBOSE
# The private daemon's socket; on a real server Nix's default socket is used.
SetEnv NIX_DAEMON_SOCKET_PATH=%s
# From nixpkgs nixos/modules/services/misc/nix-ssh-serve.nix:
Match User %s
  AllowAgentForwarding no
  AllowTcpForwarding no
  PermitTTY no
  PermitTunnel no
  X11Forwarding no
  ExposeAuthInfo %s
  ForceCommand %s
Match All
`, s.Port, hostKey, s.Dir, CacheUser, e.Socket, CacheUser, map[bool]string{true: "yes", false: "no"}[s.Protocol == Nixcache], force)
	cfgPath := filepath.Join(s.Dir, "sshd_config")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		return err
	}
	log, err := os.Create(filepath.Join(s.Dir, "sshd.log"))
	if err != nil {
		return err
	}
	defer log.Close()
	args := []string{"-D", "-e", "-f", cfgPath}
	if penaltiesSupported(sshd, cfgPath) {
		// OpenSSH 9.8 and later penalise a source address for failed logins
		// and for connections that end before authenticating, as join's and
		// doctor's host-key checks do; every test connects from 127.0.0.1,
		// so the penalties soon refuse the tests' own logins.
		args = append(args, "-o", "PerSourcePenalties=no")
	}
	cmd, err := s.withAccount(sshd, args...)
	if err != nil {
		return err
	}
	cmd.Stdout, cmd.Stderr = log, log
	if s.sshd, err = StartProcess(cmd); err != nil {
		return err
	}
	return s.waitReady()
}

var penalties struct {
	once      sync.Once
	supported bool
}

// penaltiesSupported reports whether this sshd knows PerSourcePenalties
// (OpenSSH 9.8 and later), asking it to check a configuration with it.
func penaltiesSupported(sshd, cfgPath string) bool {
	penalties.once.Do(func() {
		penalties.supported = exec.Command(sshd, "-t", "-f", cfgPath, "-o", "PerSourcePenalties=no").Run() == nil
	})
	return penalties.supported
}

// withAccount is a command that runs in a mount namespace of its own in
// which /etc/passwd, group and shadow are copies with the nix-ssh account
// added: the machine's files are never touched. ownroot makes that
// namespace (unshare would fail in a chroot whose / is not a mount) and
// execs in place, so the PID the harness holds is the command's. sshd runs
// so, and the publisher, which names the account in --allow-user.
func (s *Server) withAccount(name string, args ...string) (*exec.Cmd, error) {
	home := filepath.Join(s.Dir, "empty")
	if err := os.MkdirAll(home, 0o755); err != nil {
		return nil, err
	}
	files, err := accountFiles(s.Dir, home)
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(s.env.ownroot, append([]string{
		"/bin/sh", "-c", `mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/group && mount --bind "$3" /etc/shadow && cmd="$4" && shift 4 && exec "$cmd" "$@"`,
		"sh", files[0], files[1], files[2], name}, args...)...)
	cmd.Env = s.env.Environ()
	return cmd, nil
}

// accountFiles writes copies of passwd, group and shadow that add the cache
// account (a system user in its own group and in nix-users, with a bash
// login shell, as on NixOS) and returns their paths.
func accountFiles(dir, home string) ([3]string, error) {
	var out [3]string
	uid, err := freeID("/etc/passwd", 2)
	if err != nil {
		return out, err
	}
	gid, err := freeID("/etc/group", 2)
	if err != nil {
		return out, err
	}
	add := map[string]func([]string) []string{
		"passwd": func(lines []string) []string {
			return append(lines, fmt.Sprintf("%s:x:%d:%d:Nix SSH store user:%s:/bin/bash", CacheUser, uid, gid, home))
		},
		"group": func(lines []string) []string {
			for i, l := range lines {
				if strings.HasPrefix(l, "nix-users:") {
					if strings.HasSuffix(l, ":") {
						lines[i] = l + CacheUser
					} else {
						lines[i] = l + "," + CacheUser
					}
				}
			}
			return append(lines, fmt.Sprintf("%s:x:%d:", CacheUser, gid))
		},
		// "*": no password, yet not locked ("!"), which sshd would refuse.
		"shadow": func(lines []string) []string { return append(lines, CacheUser+":*:19000:0:99999:7:::") },
	}
	for i, name := range []string{"passwd", "group", "shadow"} {
		data, err := os.ReadFile("/etc/" + name)
		if err != nil {
			return out, err
		}
		var lines []string
		for _, l := range strings.Split(strings.TrimRight(string(data), "\n"), "\n") {
			if !strings.HasPrefix(l, CacheUser+":") {
				lines = append(lines, l)
			}
		}
		out[i] = filepath.Join(dir, name)
		mode := os.FileMode(0o644)
		if name == "shadow" {
			mode = 0o600
		}
		if err := os.WriteFile(out[i], []byte(strings.Join(add[name](lines), "\n")+"\n"), mode); err != nil {
			return out, err
		}
	}
	return out, nil
}

// freeID finds an id in the system range unused in the given file's
// field (2 = uid in passwd, gid in group).
func freeID(file string, field int) (int, error) {
	f, err := os.Open(file)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	used := map[int]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), ":")
		if len(fs) > field {
			if n, err := strconv.Atoi(fs[field]); err == nil {
				used[n] = true
			}
		}
	}
	for id := 999; id >= 100; id-- {
		if !used[id] {
			return id, nil
		}
	}
	return 0, fmt.Errorf("no free system id in %s", file)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// waitReady waits for sshd's banner.
func (s *Server) waitReady() error {
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		if exited, err := s.sshd.Exited(); exited {
			return fmt.Errorf("sshd exited at start (%v):\n%s", err, s.Log())
		}
		if c, err := net.DialTimeout("tcp", s.Addr(), time.Second); err == nil {
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

// Addr is sshd's address.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// Authorize replaces the cache account's authorized keys with lines
// (OpenSSH authorized_keys lines, options allowed). sshd reads the file on
// each login, so this takes effect at once.
func (s *Server) Authorize(lines ...string) error {
	text := strings.Join(lines, "\n")
	if text != "" {
		text += "\n"
	}
	return atomicfile.Write(s.authorizedKeys, []byte(text), 0o644)
}

// Log returns what sshd logged, for failure messages.
func (s *Server) Log() string {
	b, _ := os.ReadFile(filepath.Join(s.Dir, "sshd.log"))
	return string(b)
}

// Close stops sshd and the connections it serves, as a server going down
// would: each connection's sshd calls setsid(), so stopping sshd's process
// group alone would leave them running.
func (s *Server) Close() {
	s.sshd.StopSessions()
	s.stopPublisher()
}
