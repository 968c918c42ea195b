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
	"time"

	"github.com/nixcache/nixcache/internal/audit"
	"github.com/nixcache/nixcache/internal/publish"

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
		UsageText: "nixcache serve [--client NAME [--role pull|push]] [--registry FILE] [--publisher SOCKET] [--publish-mode all|published] [--roots DIR] [--allow-ssh-ng] [--nix-store PATH] [--nix-daemon PATH]",
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

With --publisher, the channel also takes uploads from clients whose role is
push (relayed to 'nixcache publisher', which holds the cache key), and every
request is written to the audit log there. An authorized_keys line that
names its client (--client) caps the role at its --role (pull when absent),
so a line rendered before a role was granted grants nothing more.
--publish-mode published serves only the closures of the roots under
--roots, and only on the channel: nix-store --serve and nix-daemon --stdio
cannot be restricted, so they are refused. See docs/uploads.md.

EXAMPLES:
   # sshd_config, for the account nix-ssh:
   Match User nix-ssh
     ExposeAuthInfo yes
     ForceCommand /usr/bin/nixcache serve --registry /var/lib/nixcache/clients.toml`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "client", Usage: "the registry's `NAME` for this login (set by the authorized_keys line)"},
			&cli.StringFlag{Name: "role", Usage: "the most the authorized_keys line allows, `ROLE` pull or push (with --client; default pull)"},
			registryFlag(),
			&cli.StringFlag{Name: "publisher", Usage: "relay uploads to and write the audit log through the publisher's `SOCKET`"},
			&cli.StringFlag{Name: "publish-mode", Value: "all", Usage: "serve `MODE` all (the whole store) or published (the closures of --roots)"},
			&cli.StringFlag{Name: "roots", Value: publish.DefaultRoots, Usage: "the published roots are the symlinks under `DIR`"},
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
			ceiling, err := lineRole(c)
			if err != nil {
				return err
			}
			published := false
			switch m := c.String("publish-mode"); m {
			case "all":
			case "published":
				published = true
			default:
				return errUsage{fmt.Errorf("--publish-mode is all or published, not %q", m)}
			}
			var pub *publisherClient
			var client *registry.Client
			// logSession writes the one record of a session nixcache does not
			// serve itself: a refusal, or a Nix program it hands the channel to.
			logSession := func(key, op, request string, status int) error {
				if pub == nil {
					return nil
				}
				rec := audit.Record{Time: time.Now().UTC(), Key: key, Op: op, Request: request, Status: status}
				if client != nil {
					rec.Client, rec.Role = client.Name, string(effectiveRole(client.Role, ceiling))
				}
				return pub.Audit(rec)
			}
			refuse := func(key, request string, err error) error {
				// Best effort: the refusal stands whether or not it is logged.
				logSession(key, audit.OpRefused, request, http.StatusForbidden)
				return err
			}
			if socket := c.String("publisher"); socket != "" {
				pub = newPublisherClient(socket)
			}
			client, key, err := loginClient(path, c.String("client"))
			if err != nil {
				return refuse(key, "login", err)
			}
			if pub != nil {
				pub.client, pub.keyHash = client.Name, key
			}
			args := strings.Fields(original)
			switch {
			case original == binarycache.ChannelCommand:
				return serveBinaryCache(ui, channelOptions{
					current:   stillRegistered(path, client),
					ceiling:   ceiling,
					publisher: pub,
					published: published,
					roots:     c.String("roots"),
				})
			case len(args) >= 2 && filepath.Base(args[0]) == "nix-store" && args[1] == "--serve":
				if published {
					return refuse(key, "nix-store --serve",
						fmt.Errorf("client %s asked for nix-store --serve (ssh://), which this cache does not serve in published mode: use the channel (protocol nixcache)", client.Name))
				}
				// What is not logged is not served.
				if err := logSession(key, audit.OpSession, "nix-store --serve", http.StatusOK); err != nil {
					return err
				}
				return execProgram(c.String("nix-store"), "--serve")
			case len(args) == 2 && filepath.Base(args[0]) == "nix-daemon" && args[1] == "--stdio":
				if !c.Bool("allow-ssh-ng") || published {
					return refuse(key, "nix-daemon --stdio",
						fmt.Errorf("client %s asked for nix-daemon --stdio (ssh-ng://), which this cache does not serve; use ssh:// or the channel", client.Name))
				}
				if err := logSession(key, audit.OpSession, "nix-daemon --stdio", http.StatusOK); err != nil {
					return err
				}
				return execProgram(c.String("nix-daemon"), "--stdio")
			case original == "":
				return refuse(key, "shell",
					fmt.Errorf("client %s asked for a shell; the cache account runs no commands", client.Name))
			default:
				// The client's own words are not repeated: they are whatever it sent.
				return refuse(key, "command",
					fmt.Errorf("client %s asked for a command the cache does not serve", client.Name))
			}
		},
	}
}

// lineRole is the most the authorized_keys line allows: with --client (the
// line names its client), its --role, pull when absent; without, whatever
// the registry says (sshd's ForceCommand, with ExposeAuthInfo).
func lineRole(c *cli.Context) (registry.Role, error) {
	if !c.IsSet("role") {
		if c.String("client") != "" {
			return registry.Pull, nil
		}
		return registry.Push, nil
	}
	if c.String("client") == "" {
		return "", errUsage{errors.New("--role caps the role of an authorized_keys line: it needs --client")}
	}
	r, err := registry.ParseRole(c.String("role"))
	if err != nil {
		return "", errUsage{err}
	}
	return r, nil
}

// loginClient is the registry's client whose key logged in. sshd names the
// key in the file SSH_USER_AUTH (ExposeAuthInfo); name is what the
// authorized_keys line's command= says, and must agree.
// The fingerprint of the key that logged in is returned whenever sshd
// named it, for the audit log of a refusal.
func loginClient(registryFile, name string) (*registry.Client, string, error) {
	r, err := registry.Load(registryFile)
	if err != nil {
		return nil, "", err
	}
	clients := r.Clients()
	if authFile := os.Getenv("SSH_USER_AUTH"); authFile != "" {
		key, err := authenticatedKey(authFile)
		if err != nil {
			return nil, "", err
		}
		fp := ssh.FingerprintSHA256(key)
		for i := range clients {
			if bytes.Equal(clients[i].Key.Marshal(), key.Marshal()) {
				if name != "" && name != clients[i].Name {
					return nil, fp, fmt.Errorf("the key that logged in is client %s's, not %s's", clients[i].Name, name)
				}
				return &clients[i], fp, nil
			}
		}
		return nil, fp, fmt.Errorf("the key that logged in (%s) is not in the clients registry", fp)
	}
	if name == "" {
		return nil, "", withHint(errors.New("cannot tell which client logged in"),
			"set 'ExposeAuthInfo yes' for the cache account in sshd_config, or render authorized_keys with 'nixcache clients authorized-keys'")
	}
	for i := range clients {
		if clients[i].Name == name {
			return &clients[i], clients[i].Fingerprint(), nil
		}
	}
	return nil, "", fmt.Errorf("client %s is not in the clients registry", name)
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

// channelOptions are what a channel's requests are served with.
type channelOptions struct {
	// current is the client as the registry has it now.
	current func() (*registry.Client, error)
	// ceiling is the most its authorized_keys line allows.
	ceiling   registry.Role
	publisher *publisherClient // nil: no uploads, no audit log
	published bool
	roots     string
}

// serveBinaryCache speaks the binary-cache protocol on standard input and
// output until the client closes the channel, or the registry says the
// client may no longer.
func serveBinaryCache(ui *ui, o channelOptions) error {
	var role registry.Role
	auditFailed := false
	h := &binarycache.Handler{
		Dial:      func(ctx context.Context) (*daemon.Conn, error) { return daemon.Dial(ctx, daemon.SocketPath()) },
		Logf:      func(format string, args ...any) { fmt.Fprintf(ui.stderr, "nixcache: "+format+"\n", args...) },
		MayUpload: func() bool { return effectiveRole(role, o.ceiling) == registry.Push },
	}
	if o.published {
		h.Published = &binarycache.Published{Roots: o.roots}
	}
	if o.publisher != nil {
		h.Uploads = o.publisher
		h.Audit = func(rec audit.Record) {
			rec.Time = time.Now().UTC()
			rec.Client, rec.Key, rec.Role = o.publisher.client, o.publisher.keyHash, string(effectiveRole(role, o.ceiling))
			if err := o.publisher.Audit(rec); err != nil {
				fmt.Fprintf(ui.stderr, "nixcache: %v\n", err)
				auditFailed = true
			}
		}
	}
	defer h.Close()
	return binarycache.ServeConn(stdio{}, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		client, err := o.current()
		if err != nil {
			fmt.Fprintf(ui.stderr, "nixcache: %v\n", err)
			w.Header().Set("Connection", "close")
			http.Error(w, "this client is no longer registered", http.StatusForbidden)
			return
		}
		if auditFailed {
			// What is not logged is not served.
			w.Header().Set("Connection", "close")
			http.Error(w, "the cache cannot write its audit log", http.StatusServiceUnavailable)
			return
		}
		role = client.Role
		h.ServeHTTP(w, r)
	}))
}

// effectiveRole is the lesser of the registry's role and the line's.
func effectiveRole(registered, ceiling registry.Role) registry.Role {
	if registered == registry.Push && ceiling == registry.Push {
		return registry.Push
	}
	return registry.Pull
}

// stillRegistered checks, before each request on a channel, that the
// client is still in the registry, and returns it as registered now (its
// role may have changed): a substituter keeps its channels open for hours,
// and a revocation must end them, not wait for them. The file is read
// again only when it changed.
func stillRegistered(path string, client *registry.Client) func() (*registry.Client, error) {
	var seen os.FileInfo
	var verdict error
	current := client
	return func() (*registry.Client, error) {
		st, err := os.Stat(path)
		if err != nil {
			return nil, fmt.Errorf("the clients registry: %w", err)
		}
		if seen != nil && st.ModTime().Equal(seen.ModTime()) && st.Size() == seen.Size() && os.SameFile(st, seen) {
			return current, verdict
		}
		seen, verdict = st, nil
		r, err := registry.Load(path)
		if err != nil {
			verdict = err
			return nil, verdict
		}
		for _, c := range r.Clients() {
			if c.Name == client.Name && bytes.Equal(c.Key.Marshal(), client.Key.Marshal()) {
				current = &c
				return current, nil
			}
		}
		verdict = fmt.Errorf("client %s was removed from the registry: its channel is closed", client.Name)
		return nil, verdict
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
