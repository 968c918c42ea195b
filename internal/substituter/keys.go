package substituter

import (
	"errors"
	"fmt"
	"net"
	"os"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"

	"github.com/nixcache/nixcache/internal/sshconf"
)

// maxKeyFile caps what is read from the key file, as sshconf does.
const maxKeyFile = 16 << 10

// ReadSigner reads the daemon's private key, with the checks ssh itself
// makes: a regular file only root can read, without a passphrase. Errors
// never quote the file.
func ReadSigner(path string) (ssh.Signer, error) {
	st, err := os.Lstat(path)
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, &sshconf.KeyProblem{Path: path, Reason: "not a regular file"}
	}
	if st.Mode().Perm()&0o077 != 0 {
		return nil, &sshconf.KeyProblem{Path: path, Reason: fmt.Sprintf("mode %04o lets others read it (chmod 600)", st.Mode().Perm())}
	}
	if st.Size() > maxKeyFile {
		return nil, &sshconf.KeyProblem{Path: path, Reason: "too large to be a private key"}
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	signer, err := ssh.ParsePrivateKey(data)
	var missing *ssh.PassphraseMissingError
	if errors.As(err, &missing) {
		return nil, &sshconf.KeyProblem{Path: path, Reason: "protected by a passphrase, which nobody is there to type"}
	}
	if err != nil {
		// The parser's message never quotes the key.
		return nil, &sshconf.KeyProblem{Path: path, Reason: "not a private key: " + err.Error()}
	}
	return signer, nil
}

// hostKeyCallback accepts only the key pinned for t in file; anything else,
// an unknown host included, is a *HostKeyError. There is no first use to
// trust: join pins the key, or nothing connects.
func hostKeyCallback(file string, t sshconf.Target) (ssh.HostKeyCallback, error) {
	check, err := knownhosts.New(file)
	if err != nil {
		return nil, fmt.Errorf("reading the pinned host keys: %w", err)
	}
	return func(host string, remote net.Addr, key ssh.PublicKey) error {
		err := check(host, remote, key)
		var ke *knownhosts.KeyError
		if errors.As(err, &ke) {
			return &HostKeyError{Target: t, Presented: key, PinnedFile: file, Mismatch: len(ke.Want) > 0}
		}
		if err != nil {
			// A revoked key, or a known_hosts line that cannot be read.
			return &HostKeyError{Target: t, Presented: key, PinnedFile: file, Mismatch: true}
		}
		return nil
	}, nil
}
