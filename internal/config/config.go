// Package config reads nixcache's optional TOML configuration file, which
// gives a server its defaults so that commands work there without flags.
package config

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/BurntSushi/toml"

	"github.com/nixcache/nixcache/internal/atomicfile"
)

// DefaultPath is read when neither --config nor NIXCACHE_CONFIG names a file.
const DefaultPath = "/etc/nixcache/config.toml"

// EnvVar names the environment variable that overrides DefaultPath.
const EnvVar = "NIXCACHE_CONFIG"

// DefaultSecretKeyFile is used when the file does not name a secret key.
const DefaultSecretKeyFile = "/var/lib/nixcache/secret-key"

// Config is the file's content. Field names are nix.conf's style.
type Config struct {
	// KeyName names new keys made by keygen; default: "<hostname>-1".
	KeyName string `toml:"key-name"`
	// SecretKeyFile is where keygen writes the secret key and where sign and
	// key public read it.
	SecretKeyFile string `toml:"secret-key-file"`
	// PublicKeyFile is where keygen also writes the public key; unset, the
	// public key only goes to standard output.
	PublicKeyFile string `toml:"public-key-file"`
	// TrustedPublicKeys are verify's keys when none is given on its command line.
	TrustedPublicKeys []string `toml:"trusted-public-keys"`
	// RegistryFile is the clients registry the clients commands edit;
	// default /var/lib/nixcache/clients.toml.
	RegistryFile string `toml:"registry-file"`
}

// maxSize caps the file: a configuration this size is a mistake.
const maxSize = 1 << 20

// Load reads the configuration at path. When explicit is false (the default
// path was used) a missing file yields the built-in defaults; when true, a
// missing file is an error, since the user asked for it.
func Load(path string, explicit bool) (*Config, error) {
	data, _, err := atomicfile.ReadCapped(path, maxSize, "a nixcache configuration")
	if errors.Is(err, fs.ErrNotExist) {
		if !explicit {
			return withDefaults(&Config{}), nil
		}
		return nil, fmt.Errorf("config file %q does not exist", path)
	}
	if err != nil {
		return nil, err
	}
	c, err := Parse(string(data))
	if err != nil {
		return nil, fmt.Errorf("%q: %w", path, err)
	}
	// Relative paths in the file are relative to the file, not to wherever
	// the command happens to run.
	dir := filepath.Dir(path)
	for _, p := range []*string{&c.SecretKeyFile, &c.PublicKeyFile, &c.RegistryFile} {
		if *p != "" && !filepath.IsAbs(*p) {
			*p = filepath.Join(dir, *p)
		}
	}
	return c, nil
}

// Parse parses a configuration and fills in the built-in defaults. Unknown
// keys are errors, reported with their line, so that a typo cannot silently
// fall back to a default.
func Parse(text string) (*Config, error) {
	var c Config
	md, err := toml.Decode(text, &c)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return nil, fmt.Errorf("line %d: %s", pe.Position.Line, pe.Message)
		}
		return nil, err
	}
	if undecoded := md.Undecoded(); len(undecoded) > 0 {
		k := undecoded[0]
		return nil, fmt.Errorf("line %d: unknown setting %q (known: key-name, secret-key-file, public-key-file, trusted-public-keys, registry-file)",
			lineOf(text, k), k.String())
	}
	return withDefaults(&c), nil
}

func withDefaults(c *Config) *Config {
	if c.SecretKeyFile == "" {
		c.SecretKeyFile = DefaultSecretKeyFile
	}
	return c
}

// lineOf finds the line that defines key. The TOML library reports positions
// for syntax errors but not for keys that were parsed yet unused, so the
// line is found again here: the first key or table header naming the key's
// first part.
func lineOf(text string, key toml.Key) int {
	if len(key) == 0 {
		return 0
	}
	name := regexp.QuoteMeta(key[0])
	re := regexp.MustCompile(`^\s*(\[+\s*)?("?` + name + `"?)\s*(=|\.|\])`)
	sc := bufio.NewScanner(strings.NewReader(text))
	for line := 1; sc.Scan(); line++ {
		if re.MatchString(sc.Text()) {
			return line
		}
	}
	return 0
}
