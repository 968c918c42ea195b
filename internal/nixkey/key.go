// Package nixkey owns Nix binary-cache signing keys and signatures: the
// "name:base64" text formats that nix-store --generate-binary-cache-key writes,
// the fingerprint Nix signs for a store path, and the key files on disk.
//
// The ed25519 work and the text encoding are go-nix's signature package; this
// package adds what a command-line tool needs around it: validation with
// errors that never contain key material, and safe key files.
package nixkey

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/nix-community/go-nix/pkg/narinfo/signature"
)

// SecretKey is a named ed25519 secret key in Nix's format.
type SecretKey struct {
	name string
	key  signature.SecretKey
}

// PublicKey is a named ed25519 public key in Nix's format.
type PublicKey = signature.PublicKey

// Signature is a named ed25519 signature in Nix's format.
type Signature = signature.Signature

// Name is the key's name, which Nix uses to pair signatures with keys.
func (k SecretKey) Name() string { return k.name }

// Public returns the public half of k.
func (k SecretKey) Public() PublicKey { return k.key.ToPublicKey() }

// Sign signs a fingerprint. ed25519 is deterministic, so the result is
// byte-identical to the signature Nix makes with the same key.
func (k SecretKey) Sign(fingerprint string) Signature {
	sig, err := k.key.Sign(nil, fingerprint)
	if err != nil {
		// ed25519 signing cannot fail for a key that passed ParseSecretKey.
		panic(fmt.Sprintf("nixkey: ed25519 signing failed: %v", err))
	}
	return sig
}

// Text is the key in Nix's file format, "name:base64". It is secret: callers
// write it to a key file and nowhere else.
func (k SecretKey) Text() string { return k.key.String() }

// ValidateName checks a key name. Nix takes any name without ':', but the
// name also travels where Nix's rules are not the only ones: nix.conf splits
// lists at ASCII white space and starts comments at '#', and other readers
// (the managed ssh configuration's among them) split at Unicode white space.
// A name is therefore printable ASCII without spaces, ':' or '#', which every
// name Nix's documentation and installers use (cache.nixos.org-1) already is.
func ValidateName(name string) error {
	if problem := nameProblem(name); problem != "" {
		return fmt.Errorf("key name %q %s", name, problem)
	}
	return nil
}

// nameProblem says what is wrong with a name without quoting it, or "".
func nameProblem(name string) string {
	if name == "" {
		return "is empty"
	}
	for i := 0; i < len(name); i++ {
		if b := name[i]; b > ' ' && b < 0x7f && b != ':' && b != '#' {
			continue
		}
		return fmt.Sprintf("contains %s at byte %d; key names are printable ASCII without spaces, ':' or '#'",
			describeAt(name, i), i+1)
	}
	return ""
}

// describeAt names the character at name[i] without printing it: it may be
// invisible or look like another.
func describeAt(name string, i int) string {
	b := name[i]
	switch {
	case b == ' ':
		return "a space"
	case b == ':' || b == '#':
		return fmt.Sprintf("'%c'", b)
	case b < utf8.RuneSelf:
		return fmt.Sprintf("the control character %U", rune(b))
	}
	r, _ := utf8.DecodeRuneInString(name[i:])
	if r == utf8.RuneError {
		return fmt.Sprintf("the byte 0x%02x, which is not UTF-8", b)
	}
	return fmt.Sprintf("the non-ASCII character %U", r)
}

// Generate makes a new key pair named name.
func Generate(name string) (SecretKey, error) {
	if err := ValidateName(name); err != nil {
		return SecretKey{}, err
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return SecretKey{}, err
	}
	return secretFromRaw(name, priv)
}

// MaxKeyFileSize caps how much of a key file is read: a Nix secret key is
// under 200 bytes, so anything near this size is not a key file.
const MaxKeyFileSize = 4096

// ParseSecretKey parses a secret key in Nix's format. Surrounding white space
// (a trailing newline) is ignored. Errors describe what is wrong without
// quoting any of the input.
func ParseSecretKey(text string) (SecretKey, error) {
	name, raw, err := decode(text, "secret")
	if err != nil {
		return SecretKey{}, err
	}
	switch len(raw) {
	case ed25519.PrivateKeySize:
	case ed25519.PublicKeySize:
		return SecretKey{}, errors.New("this is a public key (32 bytes), not a secret key (64 bytes)")
	default:
		return SecretKey{}, fmt.Errorf("secret key has %d bytes after base64 decoding, want %d", len(raw), ed25519.PrivateKeySize)
	}
	return secretFromRaw(name, ed25519.PrivateKey(raw))
}

func secretFromRaw(name string, priv ed25519.PrivateKey) (SecretKey, error) {
	// Nix and Go both sign with the public half stored in the secret key; a
	// file whose halves disagree would produce signatures nobody can verify.
	derived := ed25519.NewKeyFromSeed(priv.Seed())
	if !derived.Equal(priv) {
		return SecretKey{}, errors.New("secret key is corrupt: its public half does not belong to its seed")
	}
	k, err := signature.LoadSecretKey(name + ":" + base64.StdEncoding.EncodeToString(priv))
	if err != nil {
		return SecretKey{}, err
	}
	return SecretKey{name: name, key: k}, nil
}

// ParsePublicKey parses a public key in Nix's format, as it appears in
// nix.conf's trusted-public-keys.
func ParsePublicKey(text string) (PublicKey, error) {
	name, raw, err := decode(text, "public")
	if err != nil {
		return PublicKey{}, err
	}
	switch len(raw) {
	case ed25519.PublicKeySize:
	case ed25519.PrivateKeySize:
		return PublicKey{}, errors.New("this is a secret key (64 bytes), not a public key (32 bytes); never pass a secret key where a public key is expected")
	default:
		return PublicKey{}, fmt.Errorf("public key has %d bytes after base64 decoding, want %d", len(raw), ed25519.PublicKeySize)
	}
	return PublicKey{Name: name, Data: ed25519.PublicKey(raw)}, nil
}

const asciiSpace = " \t\n\v\f"

// decode splits "name:base64" and decodes the base64 part. kind is "secret"
// or "public", for messages.
func decode(text, kind string) (name string, raw []byte, err error) {
	if strings.ContainsRune(text, '\r') {
		return "", nil, fmt.Errorf("%s key contains a carriage return (CRLF line ending); Nix rejects such keys: convert the file with dos2unix", kind)
	}
	// Only ASCII white space: a key that is valid only after Unicode
	// trimming would be written back with what was trimmed.
	text = strings.Trim(text, asciiSpace)
	if text == "" {
		return "", nil, fmt.Errorf("%s key is empty", kind)
	}
	if strings.ContainsAny(text, asciiSpace) {
		return "", nil, fmt.Errorf("%s key contains white space inside it; expected a single \"name:base64\" word", kind)
	}
	name, data, ok := strings.Cut(text, ":")
	if !ok {
		return "", nil, fmt.Errorf("%s key has no name: expected \"name:base64\"", kind)
	}
	if name == "" {
		return "", nil, fmt.Errorf("%s key has an empty name before ':'", kind)
	}
	if problem := nameProblem(name); problem != "" {
		return "", nil, fmt.Errorf("%s key's name %s", kind, problem)
	}
	if data == "" {
		return "", nil, fmt.Errorf("%s key has no data after its name", kind)
	}
	raw, err = base64.StdEncoding.DecodeString(data)
	if err != nil {
		var bad base64.CorruptInputError
		if errors.As(err, &bad) {
			return "", nil, fmt.Errorf("%s key is not valid base64 (at byte %d after the name)", kind, int64(bad))
		}
		return "", nil, fmt.Errorf("%s key is not valid base64", kind)
	}
	return name, raw, nil
}

// ParseSignature parses one "name:base64" signature from a path's sigs.
func ParseSignature(text string) (Signature, error) {
	name, data, ok := strings.Cut(text, ":")
	if !ok || name == "" {
		return Signature{}, errors.New("signature has no key name")
	}
	raw, err := base64.StdEncoding.DecodeString(data)
	if err != nil || len(raw) != ed25519.SignatureSize {
		return Signature{}, fmt.Errorf("signature by %q is not %d bytes of base64", name, ed25519.SignatureSize)
	}
	return Signature{Name: name, Data: raw}, nil
}
