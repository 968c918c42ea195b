// Command quickstart runs a complete private cache on this machine and
// shows each step: a signing key made by nixcache, a closure built and
// signed on the "server", served over SSH to the nix-ssh account; a client
// machine (its own nix.conf, root's ssh directory and daemon, all under a
// temporary directory) joined with `nixcache client join`, admitted through
// the clients registry, substituting the closure, checking its signatures,
// and diagnosed by `nixcache client doctor`.
//
// Run it through scripts/quickstart.sh, which installs what is missing.
package main

import (
	"flag"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/nixcache/nixcache/tests/harness"
)

func main() {
	proto := flag.String("protocol", "ssh", "serve with `ssh` (nix-store --serve, read-only), ssh-ng (nix-daemon --stdio) or nixcache (the channel, through a local substituter)")
	keep := flag.Bool("keep", false, "keep the cache running until interrupted")
	flag.Parse()
	if err := run(harness.Protocol(*proto), *keep); err != nil {
		fmt.Fprintln(os.Stderr, "quickstart:", err)
		os.Exit(1)
	}
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func show(r harness.Result) error {
	if out := strings.TrimSpace(r.Stdout + r.Stderr); out != "" {
		fmt.Println(indent(out))
	}
	return r.Err
}

func indent(s string) string { return "    " + strings.ReplaceAll(s, "\n", "\n    ") }

func run(proto harness.Protocol, keep bool) error {
	if proto != harness.SSH && proto != harness.SSHNG && proto != harness.Nixcache {
		return fmt.Errorf("unknown protocol %q: use ssh, ssh-ng or nixcache", proto)
	}
	env, err := harness.Start()
	if err != nil {
		return err
	}
	defer env.Close()
	dir, err := os.MkdirTemp("", "nixcache-quickstart-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)

	step("building nixcache")
	nixcache, err := env.BuildNixcache()
	if err != nil {
		return err
	}

	step("server: nixcache keygen (the secret key stays on the server, mode 0600)")
	secret := filepath.Join(dir, "server", "secret-key")
	r := harness.Run(env.Environ(), nixcache, "keygen", "--name", "quickstart-cache-1", "--secret-key-file", secret)
	if err := show(r); err != nil {
		return err
	}
	publicKey := strings.TrimSpace(r.Stdout)

	step("server: building a closure of 5 store paths")
	closure, err := env.Build(5)
	if err != nil {
		return err
	}
	fmt.Println(indent(strings.Join(closure.Paths, "\n")))

	step("server: nixcache sign --recursive %s", closure.Top)
	if err := show(harness.Run(env.Environ(), nixcache, "sign", "--secret-key-file", secret, "--recursive", closure.Top)); err != nil {
		return err
	}

	step("server: sshd on loopback; nix-ssh is forced into %s", map[harness.Protocol]string{
		harness.SSH: "the read-only nix-store --serve", harness.SSHNG: "nix-daemon --stdio",
		harness.Nixcache: "nixcache serve, which knows the registry's clients and serves them the channel"}[proto])
	server, err := env.StartServer(proto)
	if err != nil {
		return err
	}
	defer server.Close()
	fmt.Println(indent(fmt.Sprintf("listening on %s, host key %s", server.Addr(), server.HostKey)))

	step("client: nixcache client join (a client machine of its own: nix.conf, root's ssh directory, nix-daemon)")
	m, err := env.NewMachine(filepath.Join(dir, "client"), "sandbox = false\nbuild-users-group = nixbld\n", true)
	if err != nil {
		return err
	}
	defer m.Close()
	hostKey, _, _, _, err := ssh.ParseAuthorizedKey([]byte(server.HostKey))
	if err != nil {
		return err
	}
	cacheURL := fmt.Sprintf("%s://%s@127.0.0.1:%d", proto, harness.CacheUser, server.Port)
	var extra []string
	if proto == harness.Nixcache {
		// This machine's own substituter (if any) keeps the default port.
		port, err := freePort()
		if err != nil {
			return err
		}
		extra = []string{"--substituter-port", fmt.Sprint(port)}
	}
	fmt.Println(indent(fmt.Sprintf("nixcache client join --cache %s --public-key %s --host-key-fingerprint %s",
		cacheURL, publicKey, ssh.FingerprintSHA256(hostKey))))
	onClient := []string{"--nix-conf-dir", m.ConfDir, "--ssh-dir", m.SSHDir, "--service-manager", "none", "--name", "quickstart-client"}
	r = harness.Run(m.Environ(), nixcache, append(append([]string{"client", "join", "--cache", cacheURL, "--public-key", publicKey,
		"--host-key-fingerprint", ssh.FingerprintSHA256(hostKey)}, onClient...), extra...)...)
	if err := show(r); err != nil {
		return err
	}
	joined := r
	conf, _ := os.ReadFile(filepath.Join(m.ConfDir, "nix.conf"))
	fmt.Println(indent("nix.conf is now:\n" + strings.TrimSpace(string(conf))))

	step("server: the admin runs the line join printed, and renders authorized_keys from the registry")
	registry := server.Registry()
	add := strings.TrimSpace(joined.Stdout) + ` --registry "$1"`
	if err := show(harness.Run(env.Environ("PATH="+filepath.Dir(nixcache)+":"+os.Getenv("PATH")), "sh", "-c", add, "sh", registry)); err != nil {
		return err
	}
	r = harness.Run(env.Environ(), nixcache, "clients", "authorized-keys", "--registry", registry, "--protocol", string(proto))
	if err := show(r); err != nil {
		return err
	}
	var lines []string
	for _, l := range strings.Split(r.Stdout, "\n") {
		if l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	if err := server.Authorize(lines...); err != nil {
		return err
	}

	if proto == harness.Nixcache {
		step("client: the local substituter, as join printed it (on a real client join installs and starts it with systemd)")
		stop, err := startSubstituter(joined.Stderr, m)
		if err != nil {
			return err
		}
		defer stop()
	}

	step("client: the daemon restarts (here the quickstart's own; on a real client join runs systemctl or launchctl)")
	if err := m.Restart(); err != nil {
		return err
	}

	step("client: the daemon substitutes %s", closure.Top)
	if err := show(m.Realise(closure.Top)); err != nil {
		return fmt.Errorf("substitution failed: %w\nsshd log:\n%s\nthe client daemon's log:\n%s", err, server.Log(), m.Log())
	}

	step("client: checking the signatures with the cache's public key")
	if err := show(harness.Run(m.Environ(), "nix", "--extra-experimental-features", "nix-command", "store", "verify",
		"--sigs-needed", "1", "--recursive", closure.Top)); err != nil {
		return err
	}

	step("client: nixcache client doctor")
	if err := show(harness.Run(m.Environ(), nixcache, append([]string{"client", "doctor"}, onClient...)...)); err != nil {
		return err
	}
	fmt.Printf("\nOK: %d paths substituted over %s and verified against %s\n", len(closure.Paths), proto, publicKey)

	if keep {
		fmt.Printf("\nThe cache and the client's daemon keep running. To use them from this shell:\n"+
			"    export NIX_REMOTE=daemon NIX_DAEMON_SOCKET_PATH=%s NIX_CONF_DIR=%s\n"+
			"    nix-store --realise %s\n"+
			"    %s client doctor --nix-conf-dir %s --ssh-dir %s --service-manager none\n"+
			"Interrupt (Ctrl-C) to stop and clean up.\n",
			m.Socket, m.ConfDir, closure.Top, nixcache, m.ConfDir, m.SSHDir)
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		<-sig
	}
	return nil
}

// startSubstituter runs the substituter command join printed (indented, on
// its own line) for the machine until stop is called, and waits until it
// serves.
func startSubstituter(joinStderr string, m *harness.Machine) (stop func(), err error) {
	command := harness.SubstituterCommand(joinStderr)
	if command == "" {
		return nil, fmt.Errorf("join printed no substituter command:\n%s", joinStderr)
	}
	fmt.Println(indent(command))
	logPath := filepath.Join(m.Dir, "substituter.log")
	log, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	defer log.Close()
	// exec: the PID is the substituter's.
	cmd := exec.Command("sh", "-c", "exec "+command)
	cmd.Env = m.Environ()
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	stop = func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		b, _ := os.ReadFile(logPath)
		if strings.Contains(string(b), "serving") {
			fmt.Println(indent(strings.TrimSpace(string(b))))
			return stop, nil
		}
	}
	stop()
	b, _ := os.ReadFile(logPath)
	return nil, fmt.Errorf("the substituter did not start serving:\n%s", b)
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
