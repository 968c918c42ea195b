package sshconf

import (
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"golang.org/x/crypto/ssh"

	"github.com/nixcache/nixcache/internal/atomicfile"
)

// maxKeyFile caps what is read from a key file.
const maxKeyFile = 16 << 10

// KeyProblem is why an existing key cannot serve the daemon.
type KeyProblem struct {
	Path   string
	Reason string
}

func (e *KeyProblem) Error() string { return fmt.Sprintf("ssh key %q: %s", e.Path, e.Reason) }

// ReadKey checks the daemon's existing key and returns its public half: it
// must be a regular file readable by root only (ssh itself refuses anything
// looser) and not protected by a passphrase (nobody is there to type it).
func ReadKey(path string) (ssh.PublicKey, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, &KeyProblem{path, "not a regular file"}
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, &KeyProblem{path, fmt.Sprintf("mode %04o lets others read it; ssh refuses such keys (chmod 600)", st.Mode().Perm())}
	}
	if st.Size() > maxKeyFile {
		return nil, &KeyProblem{path, "too large to be a private key"}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, &KeyProblem{path, "protected by a passphrase, which the daemon cannot type"}
	}
	if err != nil {
		// The parser's message never quotes the key.
		return nil, &KeyProblem{path, "not a private key ssh can use: " + err.Error()}
	}
	return signer.PublicKey(), nil
}

// GenerateKey makes a new ed25519 key without a passphrase at path (mode
// 0600, created exclusively: an existing file is never replaced) and its
// public half at path+".pub".
func GenerateKey(path, comment string) (ssh.PublicKey, error) {
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	block, err := ssh.MarshalPrivateKey(priv, comment)
	if err != nil {
		return nil, err
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		return nil, err
	}
	if err := atomicfile.Create(path, pem.EncodeToMemory(block), 0o600); err != nil {
		return nil, err
	}
	if err := atomicfile.Write(path+".pub", []byte(AuthorizedLine(sshPub, comment)+"\n"), 0o644); err != nil {
		return nil, err
	}
	return sshPub, nil
}

// AuthorizedLine is the key as an authorized_keys line with a comment.
func AuthorizedLine(k ssh.PublicKey, comment string) string {
	line := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(k)))
	if comment != "" {
		line += " " + comment
	}
	return line
}

// IsNotExist reports whether err says a file is missing.
func IsNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }
