// Command nixcache runs a private Nix binary cache served over SSH: it makes
// signing keys, signs store paths through the Nix daemon and verifies them.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"

	"github.com/urfave/cli/v2"

	"github.com/nixcache/nixcache/internal/config"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

func main() { os.Exit(main1()) }

// main1 runs the command line and decides the exit status, in one place:
// 0 success, 1 failure (or, for verify, paths without a trusted signature),
// 2 a usage error.
func main1() int { return run(os.Args, os.Stdout, os.Stderr) }

func run(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ui := newUI(stdout, stderr)
	app := newApp(ui)
	err := app.RunContext(ctx, flagsFirst(app, args))
	if isUsage(err) {
		err = withHint(err, fmt.Sprintf("run '%s --help' for usage", commandPath(app, args)))
	}
	return ui.exit(err)
}

// flagsFirst moves the flags of the command being run ahead of its
// arguments, so that "clients add NAME --key KEY" works like
// "clients add --key KEY NAME": urfave/cli stops reading flags at the first
// argument. Everything after "--" stays an argument.
func flagsFirst(app *cli.App, args []string) []string {
	leaf, at := -1, 0
	var flags []cli.Flag
	cmds := app.Commands
	for i := 1; i < len(args); i++ {
		for _, c := range cmds {
			if c.Name == args[i] {
				leaf, flags, cmds = i, c.Flags, c.Subcommands
				break
			}
		}
	}
	if leaf < 0 {
		return args
	}
	takesValue := map[string]bool{}
	for _, f := range flags {
		v, ok := f.(cli.DocGenerationFlag)
		for _, n := range f.Names() {
			takesValue[n] = ok && v.TakesValue()
		}
	}
	out := slices.Clone(args[:leaf+1])
	var positional []string
	rest := args[leaf+1:]
	for at = 0; at < len(rest); at++ {
		a := rest[at]
		if a == "--" {
			positional = append(positional, rest[at:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			positional = append(positional, a)
			continue
		}
		out = append(out, a)
		name := strings.TrimLeft(a, "-")
		if !strings.Contains(name, "=") && takesValue[name] && at+1 < len(rest) {
			at++
			out = append(out, rest[at])
		}
	}
	if len(positional) > 0 && positional[0] != "--" {
		out = append(out, "--")
	}
	return append(out, positional...)
}

// commandPath is the command line up to the (sub)command that ran, such as
// "nixcache key public", for hints.
func commandPath(app *cli.App, args []string) string {
	path := []string{app.Name}
	cmds := app.Commands
	for _, a := range args[1:] {
		for _, c := range cmds {
			if c.Name == a {
				path = append(path, a)
				cmds = c.Subcommands
				break
			}
		}
	}
	return strings.Join(path, " ")
}

func newApp(ui *ui) *cli.App {
	return &cli.App{
		Name:    "nixcache",
		Usage:   "a private Nix binary cache served over SSH",
		Version: version,
		Description: `nixcache makes Nix signing keys, signs the paths a server's store holds so that
clients accept them, and checks signatures. Commands talk to the Nix daemon
(NIX_DAEMON_SOCKET_PATH, default /nix/var/nix/daemon-socket/socket).

Defaults come from a TOML file: --config, else $NIXCACHE_CONFIG, else
/etc/nixcache/config.toml if it exists. Settings: key-name, secret-key-file
(default /var/lib/nixcache/secret-key), public-key-file, trusted-public-keys.`,
		Flags: []cli.Flag{configFlag()},
		Commands: []*cli.Command{
			keygenCommand(ui), keyCommand(ui), signCommand(ui), verifyCommand(ui),
			clientsCommand(ui), clientCommand(ui), serveCommand(ui),
			publisherCommand(ui), pushCommand(ui), auditCommand(ui),
		},
		Writer:          ui.stdout,
		ErrWriter:       ui.stderr,
		HideHelpCommand: true,
		// Errors are printed and turned into exit codes by main1, never by
		// the library.
		ExitErrHandler: func(*cli.Context, error) {},
		OnUsageError:   usageError,
	}
}

func configFlag() cli.Flag {
	return &cli.StringFlag{
		Name:  "config",
		Usage: "read defaults from `FILE` (default: $" + config.EnvVar + ", else " + config.DefaultPath + ")",
	}
}

// loadConfig reads the configuration named by --config (after the command
// or before it), else by the environment, else the default file if present.
func loadConfig(c *cli.Context) (*config.Config, error) {
	for _, ctx := range c.Lineage() {
		if ctx.IsSet("config") {
			return config.Load(ctx.String("config"), true)
		}
	}
	if p := os.Getenv(config.EnvVar); p != "" {
		return config.Load(p, true)
	}
	return config.Load(config.DefaultPath, false)
}

// errUsage marks errors in how the command was called.
type errUsage struct{ error }

func (e errUsage) Unwrap() error { return e.error }

func usageError(_ *cli.Context, err error, _ bool) error {
	return errUsage{err}
}

func isUsage(err error) bool {
	var u errUsage
	return errors.As(err, &u)
}
