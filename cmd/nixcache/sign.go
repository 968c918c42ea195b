package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/signing"
)

func signCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "sign",
		Usage:     "sign store paths with the cache's key",
		UsageText: "nixcache sign [--secret-key-file PATH] (--all | PATH... [--recursive]) [--dry-run] [--json]",
		Description: `Adds the key's signature to every chosen path that lacks it, through the Nix
daemon (before Nix 2.17 only root and trusted-users may do that). The signature is
the one 'nix store sign' would add: Nix's fingerprint of the path
(1;PATH;sha256:NARHASH;NARSIZE;REFERENCES) signed with ed25519. Paths that
carry it already are left alone, so running sign again changes nothing.

PATH may be a store path, a file inside one, or a symlink into the store
such as ./result. The secret key file defaults to secret-key-file from the
config file, else /var/lib/nixcache/secret-key.

EXAMPLES:
   nixcache sign --all
   nixcache sign --recursive ./result
   nixcache sign --all --dry-run --json`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "secret-key-file", Usage: "sign with the secret key in `PATH`"},
			&cli.BoolFlag{Name: "all", Usage: "sign every valid path in the store"},
			&cli.BoolFlag{Name: "recursive", Aliases: []string{"r"}, Usage: "also sign the closure of each PATH"},
			&cli.BoolFlag{Name: "dry-run", Aliases: []string{"n"}, Usage: "report what would be signed; change nothing"},
			&cli.BoolFlag{Name: "json", Usage: "print a JSON report"},
			configFlag(),
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if err := checkPathArgs(c); err != nil {
				return err
			}
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			key, err := readSecretKey(ui, firstNonEmpty(c.String("secret-key-file"), cfg.SecretKeyFile))
			if err != nil {
				return err
			}
			prog := ui.progress("reading path info")
			store := signing.Store{Socket: daemon.SocketPath(), Progress: prog.update}
			paths, err := store.Select(c.Context, c.Bool("all"), c.Args().Slice(), c.Bool("recursive"))
			if err != nil {
				return err
			}
			rep, err := store.Sign(c.Context, key, paths, c.Bool("dry-run"))
			prog.clear()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				return ui.json(rep)
			}
			verb := "signed"
			if rep.DryRun {
				verb = "would sign"
				for _, p := range rep.Signed {
					fmt.Fprintln(ui.stdout, p)
				}
			}
			for _, s := range rep.Skipped {
				ui.warnf("skipped %s: %s", s.Path, s.Reason)
			}
			fmt.Fprintf(ui.stdout, "%s %d, already signed %d, skipped %d (key %s)\n",
				verb, len(rep.Signed), rep.AlreadySigned, len(rep.Skipped), rep.Key)
			return nil
		},
	}
}

// checkPathArgs enforces "--all or PATH..., not both" for sign and verify.
func checkPathArgs(c *cli.Context) error {
	switch {
	case c.Bool("all") && c.NArg() > 0:
		return errUsage{fmt.Errorf("give --all or paths, not both")}
	case !c.Bool("all") && c.NArg() == 0:
		return errUsage{fmt.Errorf("no paths given: name store paths, or pass --all")}
	case c.Bool("all") && c.Bool("recursive"):
		return errUsage{fmt.Errorf("--recursive goes with paths; --all already takes every path")}
	}
	return nil
}
