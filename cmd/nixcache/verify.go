package main

import (
	"fmt"

	"github.com/urfave/cli/v2"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/nixkey"
	"github.com/nixcache/nixcache/internal/signing"
)

func verifyCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "verify",
		Usage:     "check that store paths carry a valid signature by a trusted key",
		UsageText: "nixcache verify (--trusted-key KEY | --trusted-key-file PATH)... (--all | PATH... [--recursive]) [--json]",
		Description: `Checks each path's signatures cryptographically against Nix's fingerprint of
the path and lists the paths that have no valid signature by any trusted
key. Exits 0 only when every path is good, 1 otherwise.

Without --trusted-key or --trusted-key-file, the keys are trusted-public-keys
from the config file. Unlike 'nix store verify', content-addressed paths need
a signature too: a cache signs everything it serves.

EXAMPLES:
   nixcache verify --trusted-key-file /var/lib/nixcache/public-key --all
   nixcache verify --trusted-key cache.example.org-1:BASE64 --recursive ./result`,
		Flags: []cli.Flag{
			&cli.StringSliceFlag{Name: "trusted-key", Usage: "trust public `KEY` (NAME:BASE64); repeatable"},
			&cli.StringSliceFlag{Name: "trusted-key-file", Usage: "trust the public key in `PATH`; repeatable"},
			&cli.BoolFlag{Name: "all", Usage: "check every valid path in the store"},
			&cli.BoolFlag{Name: "recursive", Aliases: []string{"r"}, Usage: "also check the closure of each PATH"},
			&cli.BoolFlag{Name: "json", Usage: "print a JSON report"},
			configFlag(),
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if err := checkPathArgs(c); err != nil {
				return err
			}
			keys, err := trustedKeys(c)
			if err != nil {
				return err
			}
			prog := ui.progress("checking")
			store := signing.Store{Socket: daemon.SocketPath(), Progress: prog.update}
			paths, err := store.Select(c.Context, c.Bool("all"), c.Args().Slice(), c.Bool("recursive"))
			if err != nil {
				return err
			}
			rep, err := store.Verify(c.Context, keys, paths)
			prog.clear()
			if err != nil {
				return err
			}
			if c.Bool("json") {
				if err := ui.json(rep); err != nil {
					return err
				}
			} else {
				for _, u := range rep.Untrusted {
					fmt.Fprintf(ui.stdout, "%s: %s\n", u.Path, u.Reason)
				}
			}
			if len(rep.Untrusted) > 0 {
				if !c.Bool("json") {
					fmt.Fprintf(ui.stderr, "nixcache: %d of %d paths have no valid signature by a trusted key\n",
						len(rep.Untrusted), rep.Checked)
				}
				return errFailed
			}
			return nil
		},
	}
}

func trustedKeys(c *cli.Context) ([]nixkey.PublicKey, error) {
	var keys []nixkey.PublicKey
	for _, text := range c.StringSlice("trusted-key") {
		k, err := nixkey.ParsePublicKey(text)
		if err != nil {
			return nil, errUsage{fmt.Errorf("--trusted-key: %w", err)}
		}
		keys = append(keys, k)
	}
	for _, path := range c.StringSlice("trusted-key-file") {
		k, err := nixkey.ReadPublicKeyFile(path)
		if err != nil {
			return nil, err
		}
		keys = append(keys, k)
	}
	if len(keys) > 0 {
		return keys, nil
	}
	cfg, err := loadConfig(c)
	if err != nil {
		return nil, err
	}
	for _, text := range cfg.TrustedPublicKeys {
		k, err := nixkey.ParsePublicKey(text)
		if err != nil {
			return nil, fmt.Errorf("trusted-public-keys in the config file: %w", err)
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, errUsage{fmt.Errorf("no trusted keys: pass --trusted-key or --trusted-key-file")}
	}
	return keys, nil
}
