package nixkey

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/nixcache/nixcache/internal/atomicfile"
)

// ExistsError is returned when a key file exists and replacing it was not
// asked for. It matches fs.ErrExist.
type ExistsError struct {
	Path string
	Kind string // "secret" or "public"
}

func (e *ExistsError) Error() string {
	return fmt.Sprintf("%s key file %q already exists", e.Kind, e.Path)
}
func (e *ExistsError) Is(target error) bool { return target == fs.ErrExist }

// SameFileError says the secret and public key files are one file, so
// writing the public key would destroy the secret.
type SameFileError struct{ Secret, Public string }

func (e *SameFileError) Error() string {
	return fmt.Sprintf("the public key file %q and the secret key file %q are the same file", e.Public, e.Secret)
}

// NotPublicKeyError says the file a public key would replace holds something
// else, which is never replaced, even when replacing was asked for: a
// mistyped path must not cost a signing key or anything else.
type NotPublicKeyError struct {
	Path   string
	Secret bool // it holds a secret key
}

func (e *NotPublicKeyError) Error() string {
	if e.Secret {
		return fmt.Sprintf("%q holds a secret key, which is never replaced by a public key", e.Path)
	}
	return fmt.Sprintf("%q does not hold a Nix public key, so it is not replaced", e.Path)
}

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

// WriteKeyPair writes k to secretPath as WriteSecretKeyFile does and, unless
// publicPath is "", its public half to publicPath, readable by everyone.
// Everything that could refuse the public key file is checked before the
// secret key is written: publicPath naming the secret key file (under any
// spelling, through symlinks or hard links), an existing file without
// overwrite, and, even with overwrite, a file that does not hold a public key.
func WriteKeyPair(secretPath, publicPath string, k SecretKey, overwrite bool) error {
	if publicPath != "" {
		if sameFile(secretPath, publicPath) {
			return &SameFileError{Secret: secretPath, Public: publicPath}
		}
		if err := checkReplaceablePublic(publicPath, overwrite); err != nil {
			return err
		}
	}
	if err := WriteSecretKeyFile(secretPath, k, overwrite); err != nil {
		return err
	}
	if publicPath == "" {
		return nil
	}
	return writePublicKeyFile(publicPath, k.Public(), overwrite)
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
		return &ExistsError{Path: path, Kind: "secret"}
	}
	return err
}

// writePublicKeyFile writes k to path with mode 0644: as a new file, or with
// overwrite in place of a public key file.
func writePublicKeyFile(path string, k PublicKey, overwrite bool) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	// Checked again: the secret key file written since may be this one
	// under a name sameFile could not see through (a symlinked directory
	// that did not exist yet).
	if err := checkReplaceablePublic(path, overwrite); err != nil {
		return err
	}
	data := []byte(k.String() + "\n")
	if overwrite {
		return atomicfile.Write(path, data, 0o644)
	}
	err := atomicfile.Create(path, data, 0o644)
	if errors.Is(err, fs.ErrExist) {
		return &ExistsError{Path: path, Kind: "public"}
	}
	return err
}

// checkReplaceablePublic refuses an existing path unless overwrite is asked
// for and it holds a public key. A secret key is named as such either way.
func checkReplaceablePublic(path string, overwrite bool) error {
	if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	text, _, readErr := readCapped(path)
	if readErr == nil {
		if _, err := ParseSecretKey(text); err == nil {
			return &NotPublicKeyError{Path: path, Secret: true}
		}
	}
	if !overwrite {
		return &ExistsError{Path: path, Kind: "public"}
	}
	if readErr != nil {
		return &NotPublicKeyError{Path: path}
	}
	if _, err := ParsePublicKey(text); err != nil {
		return &NotPublicKeyError{Path: path}
	}
	return nil
}

// sameFile reports whether a and b name one file, or will once a is
// created: the same absolute path, the same existing file (through a
// symlink or a hard link), or the same name in one existing directory
// reached two ways.
func sameFile(a, b string) bool {
	absA, errA := filepath.Abs(a)
	absB, errB := filepath.Abs(b)
	if errA == nil && errB == nil && absA == absB {
		return true
	}
	if fa, err := os.Stat(a); err == nil {
		if fb, err := os.Stat(b); err == nil && os.SameFile(fa, fb) {
			return true
		}
	}
	if filepath.Base(a) != filepath.Base(b) {
		return false
	}
	da, errA := os.Stat(filepath.Dir(a))
	db, errB := os.Stat(filepath.Dir(b))
	return errA == nil && errB == nil && os.SameFile(da, db)
}
