// Command quickstart runs a complete private cache on this machine and
// shows each step: a signing key made by nixcache, a closure built and
// signed on the "server", served over SSH to the nix-ssh account, and
// substituted into a fresh client store that checks the signatures.
//
// Run it through scripts/quickstart.sh, which installs what is missing.
package main

import (
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/nixcache/nixcache/tests/harness"
)

func main() {
	proto := flag.String("protocol", "ssh-ng", "serve with `ssh` (nix-store --serve) or ssh-ng (nix-daemon --stdio)")
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
	if proto != harness.SSH && proto != harness.SSHNG {
		return fmt.Errorf("unknown protocol %q: use ssh or ssh-ng", proto)
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

	step("server: sshd on loopback; nix-ssh is forced into the %s serve command", proto)
	server, err := env.StartServer(proto)
	if err != nil {
		return err
	}
	defer server.Close()
	fmt.Println(indent(fmt.Sprintf("listening on %s, host key %s", server.Addr(), server.HostKey)))

	step("client: a root SSH key of its own, the server's host key pinned, authorized on the server")
	client, err := env.NewClient(filepath.Join(dir, "client"), server)
	if err != nil {
		return err
	}
	if err := server.Authorize(client.PublicKey); err != nil {
		return err
	}
	if err := client.UseCache(publicKey); err != nil {
		return err
	}
	conf, _ := os.ReadFile(filepath.Join(client.ConfDir, "nix.conf"))
	fmt.Println(indent("nix.conf:\n" + strings.TrimSpace(string(conf))))

	step("client: substituting %s into a fresh store", closure.Top)
	if err := show(client.Substitute(closure.Top)); err != nil {
		return fmt.Errorf("substitution failed: %w\nsshd log:\n%s", err, server.Log())
	}

	step("client: checking the signatures with the cache's public key")
	if err := show(client.Nix("nix", "--extra-experimental-features", "nix-command", "store", "verify",
		"--sigs-needed", "1", "--recursive", closure.Top)); err != nil {
		return err
	}
	fmt.Printf("\nOK: %d paths substituted over %s and verified against %s\n", len(closure.Paths), proto, publicKey)

	if keep {
		fmt.Printf("\nThe cache keeps running. To use it from this shell:\n"+
			"    export NIX_CONF_DIR=%s NIX_SSHOPTS='-F %s'\n"+
			"    nix-store --store %s --realise %s\n"+
			"Interrupt (Ctrl-C) to stop and clean up.\n",
			client.ConfDir, client.SSHConfig(), client.Store, closure.Top)
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
		<-sig
	}
	return nil
}
