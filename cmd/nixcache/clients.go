package main

import (
	"errors"
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/nixcache/nixcache/internal/atomicfile"
	"github.com/nixcache/nixcache/internal/registry"
)

// clientsCommand manages the clients registry (admin side).
func clientsCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:  "clients",
		Usage: "manage the clients registry: which SSH keys may read the cache, and push to it",
		Description: `The clients registry is one TOML file, the server's single source of truth
for who may read the cache: one table per client, holding its SSH public key,
its role and a comment. A role is pull (the default: read the cache) or push
(also upload paths, which the cache signs and publishes). 'add', 'remove' and
'set-role' edit it (under a lock, atomically, and never on error);
'authorized-keys' turns it into sshd's authorized_keys file for the cache
account, which is what actually grants or revokes access.

The registry is --registry FILE (before or after the subcommand), else
registry-file in the config file, else ` + registry.DefaultPath + `.

EXAMPLES:
   nixcache clients add build-01 --key "$(cat build-01.pub)" --comment "CI runner"
   nixcache clients set-role build-01 push
   nixcache clients list
   nixcache clients authorized-keys --output /etc/ssh/authorized_keys.d/nix-ssh
   nixcache clients remove build-01`,
		Flags: []cli.Flag{registryFlag(), configFlag()},
		Subcommands: []*cli.Command{
			clientsAddCommand(ui), clientsRemoveCommand(ui), clientsSetRoleCommand(ui), clientsListCommand(ui),
			clientsAuthorizedKeysCommand(ui),
		},
		HideHelpCommand: true,
		OnUsageError:    usageError,
	}
}

func registryFlag() cli.Flag {
	return &cli.StringFlag{
		Name:  "registry",
		Usage: "the clients registry `FILE` (default: " + registry.DefaultPath + ")",
	}
}

// registryPath is --registry, given after the subcommand or before it,
// else registry-file from the config file, else the default.
func registryPath(c *cli.Context) (string, error) {
	for _, ctx := range c.Lineage() {
		if ctx.IsSet("registry") {
			return ctx.String("registry"), nil
		}
	}
	cfg, err := loadConfig(c)
	if err != nil {
		return "", err
	}
	if cfg.RegistryFile != "" {
		return cfg.RegistryFile, nil
	}
	return registry.DefaultPath, nil
}

// regenerateHint says what makes a registry change take effect: sshd reads
// authorized_keys, not the registry.
const regenerateHint = "sshd sees the change once authorized_keys is generated again: nixcache clients authorized-keys --output FILE"

func clientsAddCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "add",
		Usage:     "register a client's SSH public key",
		UsageText: "nixcache clients add NAME --key KEY [--role pull|push] [--comment TEXT] [--registry FILE]",
		Description: `Registers the machine NAME with its SSH public key KEY, the content of its
".pub" file ("ssh-ed25519 AAAA... root@build-01"). NAME is 1 to 63 letters,
digits, '.', '_' or '-', starting with a letter or digit. The key's own
comment (root@build-01) becomes the client's comment unless --comment is
given. A name is registered once, and a key under one name only.

--role pull (the default) lets the client read the cache; --role push also
lets it upload paths ('nixcache push', or 'nix copy' through its
substituter), which the cache signs with its own key and publishes. Uploads
go through the dispatcher only: render authorized-keys with
--protocol nixcache.

The registry (and its directory) is created by the first add.

EXAMPLES:
   nixcache clients add build-01 --key "$(cat build-01.pub)"
   nixcache clients add ci-builder --key "$(cat ci.pub)" --role push
   nixcache clients add laptop.alice --key "ssh-ed25519 AAAA..." --comment "Alice's laptop"`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "key", Usage: "the client's SSH public key, `KEY` (\"ssh-ed25519 AAAA... [COMMENT]\")"},
			&cli.StringFlag{Name: "role", Value: string(registry.Pull), Usage: "the client's `ROLE`: pull (read the cache) or push (also upload to it)"},
			&cli.StringFlag{Name: "comment", Usage: "a note on the client, `TEXT` (default: the key's own comment)"},
			registryFlag(),
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			name, err := clientNameArg(c)
			if err != nil {
				return err
			}
			if err := registry.ValidateName(name); err != nil {
				return errUsage{err}
			}
			role, err := registry.ParseRole(c.String("role"))
			if err != nil {
				return errUsage{err}
			}
			if !c.IsSet("key") {
				return errUsage{withHint(errors.New("no key given"),
					`pass the client's public key: --key "$(cat /root/.ssh/id_ed25519.pub)"`)}
			}
			key, comment, err := registry.ParseKey(c.String("key"))
			if errors.Is(err, registry.ErrPrivateKey) {
				return errUsage{withHint(err,
					"pass the public key, the content of the .pub file next to the private one",
					"the private key may now be in your shell history: if it has left its machine, give the client a new key")}
			}
			if err != nil {
				return errUsage{withHint(err, `pass the content of the client's .pub file: --key "$(cat /root/.ssh/id_ed25519.pub)"`)}
			}
			if c.IsSet("comment") {
				comment = c.String("comment")
				if err := registry.ValidateComment(comment); err != nil {
					return errUsage{err}
				}
			} else if registry.ValidateComment(comment) != nil {
				comment = "" // the key's comment is only a default
			}
			err = editRegistry(c, true, func(r *registry.Registry) error { return r.Add(name, key, comment, role) })
			switch {
			case errors.Is(err, registry.ErrExists):
				return withHint(err, fmt.Sprintf("to change its key, run 'nixcache clients remove %s' and add it again", name))
			case errors.Is(err, registry.ErrDuplicateKey):
				return withHint(err, "each machine is registered once; if it was renamed, remove the old name first")
			case err != nil:
				return loadError(err)
			}
			fmt.Fprintf(ui.stdout, "added client %s with role %s (%s)\n", name, role, describeKey(registry.Client{Key: key}))
			ui.hint(regenerateHint)
			if role == registry.Push {
				ui.hint(pushHint)
			}
			return nil
		},
	}
}

func clientsRemoveCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "remove",
		Usage:     "unregister a client",
		UsageText: "nixcache clients remove NAME [--registry FILE]",
		Description: `Removes the client NAME from the registry. Its key keeps working until the
authorized_keys file is generated again.

EXAMPLES:
   nixcache clients remove build-01 && nixcache clients authorized-keys --output /etc/ssh/authorized_keys.d/nix-ssh`,
		Flags:        []cli.Flag{registryFlag()},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			name, err := clientNameArg(c)
			if err != nil {
				return err
			}
			err = editRegistry(c, false, func(r *registry.Registry) error { return r.Remove(name) })
			if errors.Is(err, registry.ErrNotFound) {
				return withHint(err, "'nixcache clients list' shows the registered clients")
			}
			if err != nil {
				return loadError(err)
			}
			fmt.Fprintf(ui.stdout, "removed client %s\n", name)
			ui.hint(regenerateHint)
			return nil
		},
	}
}

// pushHint says where a push role takes effect: only the dispatcher
// uploads.
const pushHint = "a push client uploads through the dispatcher only: generate authorized_keys with --protocol nixcache"

func clientsSetRoleCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "set-role",
		Usage:     "change a client's role: pull, or push (which implies pull)",
		UsageText: "nixcache clients set-role NAME pull|push [--registry FILE]",
		Description: `Gives the client NAME the role pull (read the cache) or push (also upload
paths to it, which the cache signs and publishes). The registry is written
as version 2 while any client is push, so that a nixcache from before roles
refuses it rather than drop the roles; without push clients it is version 1,
as before. Setting the role a client already has changes nothing.

A promotion takes effect once authorized_keys is generated again, since
'nixcache serve' takes the role on a key's line as a ceiling; a demotion is
seen wherever the registry is read (the publisher reads it for every
upload), and the file should be generated again all the same.

EXAMPLES:
   nixcache clients set-role ci-builder push
   nixcache clients set-role ci-builder pull && nixcache clients authorized-keys --protocol nixcache --output /etc/ssh/authorized_keys.d/nix-ssh`,
		Flags:        []cli.Flag{registryFlag()},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			args := c.Args().Slice()
			switch len(args) {
			case 0:
				return errUsage{errors.New("no client name given")}
			case 1:
				return errUsage{errors.New("no role given: use pull or push")}
			case 2:
			default:
				return errUsage{fmt.Errorf("set-role takes a client name and a role, got %d arguments", len(args))}
			}
			name := args[0]
			role, err := registry.ParseRole(args[1])
			if err != nil {
				return errUsage{err}
			}
			// Setting the role a client has writes nothing: a registry
			// kept by hand stays as it was.
			errUnchanged := errors.New("unchanged")
			err = editRegistry(c, false, func(r *registry.Registry) error {
				for _, cl := range r.Clients() {
					if cl.Name == name && cl.Role == role {
						return errUnchanged
					}
				}
				return r.SetRole(name, role)
			})
			switch {
			case errors.Is(err, errUnchanged):
				fmt.Fprintf(ui.stdout, "client %s already has role %s\n", name, role)
				return nil
			case errors.Is(err, registry.ErrNotFound):
				return withHint(err, "'nixcache clients list' shows the registered clients")
			case err != nil:
				return loadError(err)
			}
			fmt.Fprintf(ui.stdout, "client %s now has role %s\n", name, role)
			ui.hint(regenerateHint)
			if role == registry.Push {
				ui.hint(pushHint)
			}
			return nil
		},
	}
}

func clientsListCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "list",
		Usage:     "list the registered clients",
		UsageText: "nixcache clients list [--registry FILE] [--json]",
		Description: `Prints the clients sorted by name: name, role (pull or push), key type,
the key's SHA256 fingerprint (as 'ssh-keygen -l' and sshd's log show it)
and comment. --json prints a list of objects with name, role, type,
fingerprint, key and comment.

EXAMPLES:
   nixcache clients list
   nixcache clients list --json | jq -r '.[] | select(.role == "push") | .name'`,
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
			registryFlag(),
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return errUsage{fmt.Errorf("clients list takes no arguments, got %q", c.Args().First())}
			}
			path, err := registryPath(c)
			if err != nil {
				return err
			}
			r, err := registry.Load(path)
			if err != nil {
				return loadError(err)
			}
			clients := r.Clients()
			if c.Bool("json") {
				type client struct {
					Name        string `json:"name"`
					Role        string `json:"role"`
					Type        string `json:"type"`
					Fingerprint string `json:"fingerprint"`
					Key         string `json:"key"`
					Comment     string `json:"comment"`
				}
				list := []client{}
				for _, cl := range clients {
					list = append(list, client{cl.Name, string(cl.Role), cl.Key.Type(), cl.Fingerprint(), cl.KeyText(), cl.Comment})
				}
				return ui.json(list)
			}
			if len(clients) == 0 {
				ui.notef("no clients registered in %q", path)
				return nil
			}
			rows := [][]string{{"NAME", "ROLE", "TYPE", "FINGERPRINT", "COMMENT"}}
			for _, cl := range clients {
				rows = append(rows, []string{cl.Name, string(cl.Role), cl.Key.Type(), cl.Fingerprint(), cl.Comment})
			}
			ui.table(rows)
			return nil
		},
	}
}

func clientsAuthorizedKeysCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "authorized-keys",
		Usage:     "write sshd's authorized_keys for the cache account",
		UsageText: "nixcache clients authorized-keys [--registry FILE] [--protocol ssh|ssh-ng|nixcache] [--serve-command PATH] [--output FILE]",
		Description: `Renders the registry as an OpenSSH authorized_keys file for the account
clients log in as (nix-ssh), one line per client:

   restrict,command="nix-store --serve" ssh-ed25519 AAAA... nixcache:build-01

"restrict" (OpenSSH 7.2 and later) turns off the terminal, port, agent and
X11 forwarding, ~/.ssh/rc and whatever later versions add; command= runs
the serve command whatever the client asks for. --protocol ssh (the default)
forces 'nix-store --serve' without --write: clients can query and download
paths and nothing else. --protocol ssh-ng forces 'nix-daemon --stdio', which
serves clients as untrusted daemon users: they can also build derivations
on the server, add content-addressed or validly signed paths, add GC roots
and run the garbage collector. Choose it only for clients trusted that far.
--protocol nixcache forces 'nixcache serve --client NAME', the dispatcher:
the channel of 'nixcache client substituter', and the read-only
'nix-store --serve' for ssh:// clients (see 'nixcache serve --help'). A push
client's line adds --role push, the most the dispatcher grants that key
(it also checks the registry); pull lines carry no role. Only the
dispatcher takes uploads: with ssh or ssh-ng a push client's line is the
same as a pull client's.
--serve-command replaces the program (found through PATH by default), for
instance with a store path on NixOS; nixcache never adds --write. The file
goes to standard output, or replaces --output FILE atomically (mode 0644).

EXAMPLES:
   nixcache clients authorized-keys --output /etc/ssh/authorized_keys.d/nix-ssh
   nixcache clients authorized-keys --serve-command /usr/bin/nix-store`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "protocol", Value: string(registry.SSH), Usage: "serve with `PROTOCOL` ssh (nix-store --serve, read-only), ssh-ng (nix-daemon --stdio, see above) or nixcache (nixcache serve)"},
			&cli.StringFlag{Name: "serve-command", Usage: "run the program at `PATH` (default: nix-store, nix-daemon or nixcache, through PATH)"},
			&cli.StringFlag{Name: "output", Usage: "write to `FILE` instead of standard output"},
			registryFlag(),
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return errUsage{fmt.Errorf("clients authorized-keys takes no arguments, got %q", c.Args().First())}
			}
			proto, err := registry.ParseProtocol(c.String("protocol"))
			if err != nil {
				return errUsage{err}
			}
			if _, err := registry.ServeCommand(proto, c.String("serve-command")); err != nil {
				return errUsage{err}
			}
			r, err := loadRegistry(c)
			if err != nil {
				return err
			}
			data, err := r.AuthorizedKeys(proto, c.String("serve-command"))
			if err != nil {
				return err
			}
			if out := c.String("output"); out != "" {
				return atomicfile.Write(out, data, 0o644)
			}
			_, err = ui.stdout.Write(data)
			return err
		},
	}
}

// clientNameArg is the one NAME argument of add and remove.
func clientNameArg(c *cli.Context) (string, error) {
	args := c.Args().Slice()
	switch len(args) {
	case 0:
		return "", errUsage{errors.New("no client name given")}
	case 1:
		return args[0], nil
	}
	return "", errUsage{fmt.Errorf("one client name at a time, got %d arguments", len(args))}
}

func describeKey(cl registry.Client) string { return cl.Key.Type() + " " + cl.Fingerprint() }

// loadRegistry reads the registry named on the command line or in the
// config file.
func loadRegistry(c *cli.Context) (*registry.Registry, error) {
	path, err := registryPath(c)
	if err != nil {
		return nil, err
	}
	r, err := registry.Load(path)
	if err != nil {
		return nil, loadError(err)
	}
	return r, nil
}

// editRegistry applies edit to the registry under its lock; errors other
// than the edit's own come with advice.
func editRegistry(c *cli.Context, create bool, edit func(*registry.Registry) error) error {
	path, err := registryPath(c)
	if err != nil {
		return err
	}
	err = registry.Edit(path, create, edit)
	if errors.Is(err, registry.ErrLocked) {
		return withHint(err, "another 'nixcache clients' command is editing it: try again when it is done")
	}
	if errors.Is(err, registry.ErrUnsafeLock) {
		return withHint(err, "another user could hold it to block every edit: remove it, and nixcache makes a private one")
	}
	return err
}

// loadError adds advice to an error reading the registry.
func loadError(err error) error {
	if errors.Is(err, registry.ErrNoRegistry) {
		return withHint(err, "register a client with 'nixcache clients add', or pass --registry FILE")
	}
	return err
}
