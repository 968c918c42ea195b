package harness

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Machine is a client machine as `nixcache client join` sees it: a nix.conf
// directory, root's ssh directory and a nix-daemon of its own that reads
// them, as the system daemon reads /etc/nix and /root/.ssh. Its daemon
// serves a fresh chroot store, or the machine's /nix/store for tests that
// build.
type Machine struct {
	Dir     string
	ConfDir string
	SSHDir  string
	// Store is the chroot store's root, "" for the machine's /nix/store.
	Store  string
	Socket string

	env    *Env
	daemon *Process
}

// NewMachine makes a machine in dir (a fresh directory) with nixConf as its
// nix.conf, and starts its daemon. chroot says whether the daemon serves a
// store of its own under dir.
func (e *Env) NewMachine(dir, nixConf string, chroot bool) (*Machine, error) {
	m := &Machine{
		Dir:     dir,
		ConfDir: filepath.Join(dir, "etc-nix"),
		SSHDir:  filepath.Join(dir, "root-ssh"),
		Socket:  filepath.Join(dir, "daemon.socket"),
		env:     e,
	}
	if chroot {
		m.Store = filepath.Join(dir, "store")
	}
	// Its ordinary users reach the daemon's socket and read nix.conf
	// (RunAs), in a directory that may exist already (t.TempDir's is 0700).
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return nil, err
	}
	for _, d := range []string{m.ConfDir, filepath.Join(dir, "home")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := os.WriteFile(filepath.Join(m.ConfDir, "nix.conf"), []byte(nixConf), 0o644); err != nil {
		return nil, err
	}
	return m, m.Start()
}

// daemonEnviron is what the machine's daemon runs with: its nix.conf, and
// ssh reading root's ssh config in SSHDir (ssh finds ~/.ssh through the
// password database, not HOME, so it has to be told).
func (m *Machine) daemonEnviron() []string {
	return nixEnviron(filepath.Join(m.Dir, "home"), m.ConfDir, "NIX_SSHOPTS=-F "+filepath.Join(m.SSHDir, "config"))
}

// Start starts the machine's daemon.
func (m *Machine) Start() error {
	var args []string
	if m.Store != "" {
		args = []string{"--option", "store", "local?root=" + m.Store}
	}
	var err error
	m.daemon, err = m.env.StartDaemonWith(m.daemonEnviron(), m.Socket, m.Socket+".log", args...)
	return err
}

// Stop stops the machine's daemon.
func (m *Machine) Stop() {
	m.daemon.Stop()
	m.daemon = nil
}

// Restart restarts the daemon, as systemctl restart nix-daemon would.
func (m *Machine) Restart() error {
	m.Stop()
	return m.Start()
}

// Log returns what the machine's daemon logged (ssh's errors among it), for
// failure messages.
func (m *Machine) Log() string {
	b, _ := os.ReadFile(m.Socket + ".log")
	return string(b)
}

// Close stops the daemon.
func (m *Machine) Close() { m.Stop() }

// Environ is the environment of Nix commands run on the machine as root:
// they reach its daemon and read its nix.conf, as on a real machine. (Root
// is trusted, so its client passes settings such as substituters on to the
// daemon; the settings every client passes, such as fallback, come from
// this nix.conf too.)
func (m *Machine) Environ(extra ...string) []string {
	return append(nixEnviron(filepath.Join(m.Dir, "home"), m.ConfDir,
		"NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH="+m.Socket), extra...)
}

// Has reports whether path is valid in the machine's store.
func (m *Machine) Has(path string) bool {
	return Run(m.Environ(), "nix-store", "--check-validity", path).Err == nil
}

// Realise realises paths through the machine's daemon.
func (m *Machine) Realise(paths ...string) Result {
	return Run(m.Environ(), "nix-store", append([]string{"--realise"}, paths...)...)
}

// Import adds paths to the machine's store as root (`nix-store --import`
// through its daemon, which trusts root, so no signature is needed), in the
// order given: references first.
func (m *Machine) Import(paths ...Path) error {
	cmd := exec.Command("nix-store", "--import")
	cmd.Env = m.Environ()
	cmd.Stdin = bytes.NewReader(Export(paths...))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("nix-store --import: %v\n%s", err, out)
	}
	return nil
}

// Nobody is the uid (and gid) of an ordinary user with no privileges.
const Nobody = 65534

// RunAs runs a command on the machine as the ordinary user uid (its group
// the same number, no supplementary groups), with a HOME of its own and
// the machine's nix.conf and daemon, as a local user's Nix commands run.
func (m *Machine) RunAs(uid int, name string, args ...string) Result {
	home := filepath.Join(m.Dir, fmt.Sprintf("home-%d", uid))
	if err := os.MkdirAll(home, 0o700); err != nil {
		return Result{Err: err}
	}
	if err := os.Chown(home, uid, uid); err != nil {
		return Result{Err: err}
	}
	env := append(nixEnviron(home, m.ConfDir, "NIX_REMOTE=daemon", "NIX_DAEMON_SOCKET_PATH="+m.Socket), "USER="+strconv.Itoa(uid))
	return Run(env, "setpriv", append([]string{"--reuid", strconv.Itoa(uid), "--regid", strconv.Itoa(uid), "--clear-groups", "--", name}, args...)...)
}

// Substituter is a running `nixcache client substituter` of a machine.
type Substituter struct {
	// URL is where it serves, http://127.0.0.1:PORT.
	URL     string
	logPath string
	proc    *Process
}

// StartSubstituter runs `nixcache client substituter --cache cacheURL` as
// root with the machine's ssh directory (set up by `nixcache client join`)
// and the extra arguments, on a free loopback port, and waits until it
// serves. Stop it with Stop.
func (m *Machine) StartSubstituter(cacheURL string, extra ...string) (*Substituter, error) {
	nixcache, err := m.env.Nixcache()
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	spool, err := os.MkdirTemp(m.Dir, "spool-")
	if err != nil {
		return nil, err
	}
	s := &Substituter{URL: "http://" + addr, logPath: spool + ".log"}
	log, err := os.Create(s.logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	cmd := exec.Command(nixcache, append([]string{"client", "substituter", "--cache", cacheURL, "--listen", addr,
		"--ssh-dir", m.SSHDir, "--spool-dir", spool}, extra...)...)
	cmd.Env = m.Environ()
	cmd.Stdout, cmd.Stderr = log, log
	if s.proc, err = StartProcess(cmd); err != nil {
		return nil, err
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if exited, werr := s.proc.Exited(); exited {
			return nil, fmt.Errorf("the substituter exited at start (%v):\n%s", werr, s.Log())
		}
		if strings.Contains(s.Log(), "serving") {
			return s, nil
		}
	}
	s.Stop()
	return nil, fmt.Errorf("the substituter did not serve within 30s:\n%s", s.Log())
}

// Stop stops the substituter (SIGTERM, then SIGKILL).
func (s *Substituter) Stop() { s.proc.Stop() }

// Kill kills the substituter at once, as a crash would.
func (s *Substituter) Kill() {
	syscall.Kill(-s.proc.cmd.Process.Pid, syscall.SIGKILL)
	s.proc.Stop()
}

// Log is what the substituter logged.
func (s *Substituter) Log() string {
	b, _ := os.ReadFile(s.logPath)
	return string(b)
}

// StoreURI names the machine's store for a Nix command's --from or
// --store: the daemon, with the chroot's root if it has one. Nix's client
// reads the NARs of a daemon's store straight from the file system (its
// daemon store is a local one too), so it must be told where the chroot
// store's files are, as on a real machine it finds them in /nix/store.
func (m *Machine) StoreURI() string {
	if m.Store == "" {
		return "daemon"
	}
	return "daemon?root=" + m.Store
}
