package harness

import (
	"os"
	"path/filepath"
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
	daemon *process
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
	m.daemon, err = m.env.startDaemon(m.daemonEnviron(), m.Socket, m.Socket+".log", args...)
	return err
}

// Stop stops the machine's daemon.
func (m *Machine) Stop() {
	m.daemon.stop()
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
