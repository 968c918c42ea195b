package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"
	"golang.org/x/crypto/ssh"

	"github.com/nixcache/nixcache/internal/binarycache"
	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/registry"
)

func serveCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "serve",
		Usage:     "serve the cache to one SSH login (the cache account's forced command)",
		UsageText: "nixcache serve [--client NAME] [--registry FILE] [--allow-ssh-ng] [--nix-store PATH] [--nix-daemon PATH]",
		Description: `Run by sshd for every login to the cache account (ForceCommand, with
ExposeAuthInfo yes, or the command= of each authorized key), serve finds the
registry's client whose key logged in, then does what the client asked for
(SSH_ORIGINAL_COMMAND):

   nixcache-binary-cache   Nix's binary-cache HTTP API on the channel, for
                           'nixcache client substituter'
   nix-store --serve ...   Nix's ssh:// store, read-only (--write is dropped)
   nix-daemon --stdio      Nix's ssh-ng:// store, only with --allow-ssh-ng

and refuses anything else, a shell included. A key that is not in the
registry gets nothing, whatever route put it in front of the account: the
key comes from sshd (ExposeAuthInfo's SSH_USER_AUTH); without it, from
--client, which only the authorized_keys line can set.

EXAMPLES:
   # sshd_config, for the account nix-ssh:
   Match User nix-ssh
     ExposeAuthInfo yes
     ForceCommand /usr/bin/nixcache serve --registry /var/lib/nixcache/clients.toml`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "client", Usage: "the registry's `NAME` for this login (set by the authorized_keys line)"},
			registryFlag(),
			&cli.BoolFlag{Name: "allow-ssh-ng", Usage: "let clients run nix-daemon --stdio (not read-only: see 'clients authorized-keys --help')"},
			&cli.StringFlag{Name: "nix-store", Value: "nix-store", Usage: "run `PATH` for nix-store --serve"},
			&cli.StringFlag{Name: "nix-daemon", Value: "nix-daemon", Usage: "run `PATH` for nix-daemon --stdio"},
			configFlag(),
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return errUsage{fmt.Errorf("serve takes no arguments, got %q", c.Args().First())}
			}
			original, underSSH := os.LookupEnv("SSH_ORIGINAL_COMMAND")
			if !underSSH && os.Getenv("SSH_CONNECTION") == "" {
				return withHint(errors.New("serve runs as the cache account's forced command, under sshd"),
					"see 'nixcache serve --help' for the sshd_config lines")
			}
			path, err := registryPath(c)
			if err != nil {
				return err
			}
			client, err := loginClient(path, c.String("client"))
			if err != nil {
				return err
			}
			args := strings.Fields(original)
			switch {
			case original == binarycache.ChannelCommand:
				return serveBinaryCache(ui, stillRegistered(path, client))
			case len(args) >= 2 && filepath.Base(args[0]) == "nix-store" && args[1] == "--serve":
				return execProgram(c.String("nix-store"), "--serve")
			case len(args) == 2 && filepath.Base(args[0]) == "nix-daemon" && args[1] == "--stdio":
				if !c.Bool("allow-ssh-ng") {
					return fmt.Errorf("client %s asked for nix-daemon --stdio (ssh-ng://), which this cache does not serve; use ssh://", client.Name)
				}
				return execProgram(c.String("nix-daemon"), "--stdio")
			case original == "":
				return fmt.Errorf("client %s asked for a shell; the cache account runs no commands", client.Name)
			default:
				// The client's own words are not repeated: they are whatever it sent.
				return fmt.Errorf("client %s asked for a command the cache does not serve", client.Name)
			}
		},
	}
}

// loginClient is the registry's client whose key logged in. sshd names the
// key in the file SSH_USER_AUTH (ExposeAuthInfo); name is what the
// authorized_keys line's command= says, and must agree.
func loginClient(registryFile, name string) (*registry.Client, error) {
	r, err := registry.Load(registryFile)
	if err != nil {
		return nil, err
	}
	clients := r.Clients()
	if authFile := os.Getenv("SSH_USER_AUTH"); authFile != "" {
		key, err := authenticatedKey(authFile)
		if err != nil {
			return nil, err
		}
		for i := range clients {
			if bytes.Equal(clients[i].Key.Marshal(), key.Marshal()) {
				if name != "" && name != clients[i].Name {
					return nil, fmt.Errorf("the key that logged in is client %s's, not %s's", clients[i].Name, name)
				}
				return &clients[i], nil
			}
		}
		return nil, fmt.Errorf("the key that logged in (%s) is not in the clients registry", ssh.FingerprintSHA256(key))
	}
	if name == "" {
		return nil, withHint(errors.New("cannot tell which client logged in"),
			"set 'ExposeAuthInfo yes' for the cache account in sshd_config, or render authorized_keys with 'nixcache clients authorized-keys'")
	}
	for i := range clients {
		if clients[i].Name == name {
			return &clients[i], nil
		}
	}
	return nil, fmt.Errorf("client %s is not in the clients registry", name)
}

// authenticatedKey reads the public key sshd accepted from its
// ExposeAuthInfo file: lines of "METHOD DETAILS", here "publickey TYPE BASE64".
func authenticatedKey(path string) (ssh.PublicKey, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sc := bufio.NewScanner(io.LimitReader(f, 64<<10))
	for sc.Scan() {
		method, rest, _ := strings.Cut(sc.Text(), " ")
		if method != "publickey" {
			continue
		}
		key, _, _, _, err := ssh.ParseAuthorizedKey([]byte(rest))
		if err != nil {
			return nil, fmt.Errorf("sshd's SSH_USER_AUTH holds a key that does not parse: %v", err)
		}
		return key, nil
	}
	return nil, errors.New("sshd's SSH_USER_AUTH names no public key: the cache account takes public keys only")
}

// serveBinaryCache speaks the binary-cache protocol on standard input and
// output until the client closes the channel, or allowed says the client
// may no longer.
func serveBinaryCache(ui *ui, allowed func() error) error {
	h := &binarycache.Handler{
		Dial: func(ctx context.Context) (*daemon.Conn, error) { return daemon.Dial(ctx, daemon.SocketPath()) },
		Logf: func(format string, args ...any) { fmt.Fprintf(ui.stderr, "nixcache: "+format+"\n", args...) },
	}
	defer h.Close()
	return binarycache.ServeConn(stdio{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := allowed(); err != nil {
			fmt.Fprintf(ui.stderr, "nixcache: %v\n", err)
			w.Header().Set("Connection", "close")
			http.Error(w, "this client is no longer registered", http.StatusForbidden)
			return
		}
		h.ServeHTTP(w, r)
	}))
}

// stillRegistered checks, before each request on a channel, that the
// client is still in the registry: a substituter keeps its channels open
// for hours, and a revocation must end them, not wait for them. The file
// is read again only when it changed.
func stillRegistered(path string, client *registry.Client) func() error {
	var seen os.FileInfo
	var verdict error
	return func() error {
		st, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("the clients registry: %w", err)
		}
		if seen != nil && st.ModTime().Equal(seen.ModTime()) && st.Size() == seen.Size() && os.SameFile(st, seen) {
			return verdict
		}
		seen, verdict = st, nil
		r, err := registry.Load(path)
		if err != nil {
			verdict = err
			return verdict
		}
		for _, c := range r.Clients() {
			if c.Name == client.Name && bytes.Equal(c.Key.Marshal(), client.Key.Marshal()) {
				return nil
			}
		}
		verdict = fmt.Errorf("client %s was removed from the registry: its channel is closed", client.Name)
		return verdict
	}
}

// stdio is the SSH channel as sshd hands it to the forced command.
type stdio struct{}

func (stdio) Read(p []byte) (int, error)  { return os.Stdin.Read(p) }
func (stdio) Write(p []byte) (int, error) { return os.Stdout.Write(p) }
func (stdio) Close() error                { return errors.Join(os.Stdin.Close(), os.Stdout.Close()) }

// execProgram replaces this process with program, as sshd would have run it.
func execProgram(program string, args ...string) error {
	path, err := exec.LookPath(program)
	if err != nil {
		return err
	}
	return syscall.Exec(path, append([]string{filepath.Base(path)}, args...), os.Environ())
}
