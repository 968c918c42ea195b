package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/nixcache/nixcache/internal/nixkey"
)

func keygenCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "keygen",
		Usage:     "make a new signing key pair",
		UsageText: "nixcache keygen [--name NAME] [--secret-key-file PATH] [--public-key-file PATH] [--force]",
		Description: `Makes an ed25519 key pair in Nix's format, interchangeable with
'nix-store --generate-binary-cache-key'. The secret key is written with mode
0600 and never replaces an existing file unless --force is given; the public
key ("NAME:BASE64") is printed on standard output for clients'
trusted-public-keys, and also written to --public-key-file when given. That
file is replaced only with --force and only if it holds a public key: never
the secret key file under another name, never any other file.

NAME is printable ASCII without spaces, ':' or '#'.

Defaults: NAME is key-name from the config file, else "$(hostname)-1";
the secret key file is secret-key-file from the config file, else
/var/lib/nixcache/secret-key. The config file's public-key-file is written
only along with its own secret-key-file: a key made elsewhere with
--secret-key-file never replaces the cache's published public key.

EXAMPLES:
   nixcache keygen --name cache.example.org-1
   nixcache keygen --secret-key-file ./cache.secret --public-key-file ./cache.pub`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "name", Usage: "key `NAME`, as clients will see it (e.g. cache.example.org-1)"},
			&cli.StringFlag{Name: "secret-key-file", Usage: "write the secret key to `PATH`"},
			&cli.StringFlag{Name: "public-key-file", Usage: "also write the public key to `PATH`"},
			&cli.BoolFlag{Name: "force", Usage: "replace an existing secret key file and public key file"},
			configFlag(),
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return errUsage{fmt.Errorf("keygen takes no arguments, got %q", c.Args().First())}
			}
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			name := firstNonEmpty(c.String("name"), cfg.KeyName)
			if name == "" {
				host, err := os.Hostname()
				if err != nil {
					return withHint(err, "pass --name")
				}
				name = host + "-1"
			}
			if err := nixkey.ValidateName(name); err != nil {
				return errUsage{withHint(err, "choose a name like cache.example.org-1: printable ASCII without spaces, ':' or '#'")}
			}
			secretPath := firstNonEmpty(c.String("secret-key-file"), cfg.SecretKeyFile)
			publicPath := c.String("public-key-file")
			if publicPath == "" && c.String("secret-key-file") == "" {
				publicPath = cfg.PublicKeyFile
			}
			key, err := nixkey.Generate(name)
			if err != nil {
				return err
			}
			if err := nixkey.WriteKeyPair(secretPath, publicPath, key, c.Bool("force")); err != nil {
				return keyFileError(err)
			}
			fmt.Fprintln(ui.stdout, key.Public().String())
			return nil
		},
	}
}

// keyFileError says what to do when keygen refuses to write a key file.
func keyFileError(err error) error {
	var exists *nixkey.ExistsError
	var same *nixkey.SameFileError
	var notPublic *nixkey.NotPublicKeyError
	switch {
	case errors.As(err, &exists) && exists.Kind == "secret":
		return withHint(err,
			"nixcache never replaces a signing key by accident: clients trust the old one",
			"to rotate the key, pass --force (or choose another --secret-key-file) and give clients the new public key")
	case errors.As(err, &exists):
		return withHint(err, "nothing was written",
			"to replace the public key file, pass --force, or choose another --public-key-file")
	case errors.As(err, &same):
		return errUsage{withHint(err, "nothing was written",
			"give --public-key-file a path of its own, such as the secret key file's name with .pub added")}
	case errors.As(err, &notPublic):
		return withHint(err, "nothing was written",
			"check --public-key-file: it names the file the public key is written to, and --force replaces only a public key")
	}
	return err
}

func firstNonEmpty(ss ...string) string {
	for _, s := range ss {
		if s != "" {
			return s
		}
	}
	return ""
}
