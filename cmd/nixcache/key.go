package main

import (
	"errors"
	"fmt"
	"io/fs"

	"github.com/urfave/cli/v2"

	"github.com/nixcache/nixcache/internal/config"
	"github.com/nixcache/nixcache/internal/nixkey"
)

func keyCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:  "key",
		Usage: "work with existing keys",
		Subcommands: []*cli.Command{{
			Name:      "public",
			Usage:     "print the public key of a secret key",
			UsageText: "nixcache key public [--secret-key-file PATH]",
			Description: `Prints "NAME:BASE64", the line clients put in trusted-public-keys.

EXAMPLES:
   nixcache key public
   nixcache key public --secret-key-file /etc/nix/cache.secret`,
			Flags: []cli.Flag{
				&cli.StringFlag{Name: "secret-key-file", Usage: "read the secret key from `PATH`"},
				configFlag(),
			},
			OnUsageError: usageError,
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return errUsage{fmt.Errorf("key public takes no arguments, got %q", c.Args().First())}
				}
				cfg, err := loadConfig(c)
				if err != nil {
					return err
				}
				key, err := readSecretKey(ui, firstNonEmpty(c.String("secret-key-file"), cfg.SecretKeyFile))
				if err != nil {
					return err
				}
				fmt.Fprintln(ui.stdout, key.Public().String())
				return nil
			},
		}},
		OnUsageError: usageError,
	}
}

// readSecretKey reads a secret key file, warning when others can read it.
func readSecretKey(ui *ui, path string) (nixkey.SecretKey, error) {
	key, loose, err := nixkey.ReadSecretKeyFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		hint := "pass --secret-key-file, or set secret-key-file in " + config.DefaultPath
		return key, withHint(fmt.Errorf("no secret key file at %q", path),
			"make a key with 'nixcache keygen', or "+hint)
	}
	if err != nil {
		return key, err
	}
	if loose {
		ui.warnf("%q can be read by users other than its owner", path)
		ui.hint("chmod 600 %q", path)
	}
	return key, nil
}
