package nixkey

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nixcache/nixcache/internal/atomicfile"
)

// ExistsError is returned by WriteSecretKeyFile when the file exists and
// overwriting was not asked for. It matches fs.ErrExist.
type ExistsError struct{ Path string }

func (e *ExistsError) Error() string        { return fmt.Sprintf("secret key file %q already exists", e.Path) }
func (e *ExistsError) Is(target error) bool { return target == fs.ErrExist }

// ReadSecretKeyFile reads and parses a secret key file. loose is true when the
// file can be read by its group or by others, which callers should warn about.
func ReadSecretKeyFile(path string) (key SecretKey, loose bool, err error) {
	text, mode, err := readCapped(path)
	if err != nil {
		return SecretKey{}, false, err
	}
	key, err = ParseSecretKey(text)
	if err != nil {
		return SecretKey{}, false, fmt.Errorf("%q: %w", path, err)
	}
	return key, mode.Perm()&0o077 != 0, nil
}

// ReadPublicKeyFile reads and parses a public key file.
func ReadPublicKeyFile(path string) (PublicKey, error) {
	text, _, err := readCapped(path)
	if err != nil {
		return PublicKey{}, err
	}
	key, err := ParsePublicKey(text)
	if err != nil {
		return PublicKey{}, fmt.Errorf("%q: %w", path, err)
	}
	return key, nil
}

func readCapped(path string) (string, fs.FileMode, error) {
	buf, st, err := atomicfile.ReadCapped(path, MaxKeyFileSize, "a Nix key file")
	if err != nil {
		return "", 0, err
	}
	return string(buf), st.Mode(), nil
}

// WriteSecretKeyFile writes k to path with mode 0600. Without overwrite it
// never replaces an existing file (the error wraps ErrExist); with overwrite
// the old file is replaced atomically. A missing parent directory is created
// with mode 0700.
func WriteSecretKeyFile(path string, k SecretKey, overwrite bool) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	data := []byte(k.Text())
	if overwrite {
		return atomicfile.Write(path, data, 0o600)
	}
	err := atomicfile.Create(path, data, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return &ExistsError{Path: path}
	}
	return err
}

// WritePublicKeyFile writes k to path, readable by everyone, replacing any
// old file atomically.
func WritePublicKeyFile(path string, k PublicKey) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return atomicfile.Write(path, []byte(k.String()+"\n"), 0o644)
}
