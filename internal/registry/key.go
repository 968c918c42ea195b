package registry

import (
	"bytes"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/crypto/ssh"
)

// namePattern keeps names safe everywhere they go: a TOML table name, the
// comment of an authorized_keys line, a NixOS attribute name, a file name.
var namePattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$`)

// ValidateName checks a client's name.
func ValidateName(name string) error {
	if !namePattern.MatchString(name) {
		return fmt.Errorf("client name %q is not allowed: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit", name)
	}
	return nil
}

// maxCommentLen bounds a comment: it is a note for admins, not a document.
const maxCommentLen = 200

// ValidateComment checks a client's comment: one line of printable text.
func ValidateComment(comment string) error {
	if !utf8.ValidString(comment) {
		return errors.New("the comment is not valid UTF-8")
	}
	if utf8.RuneCountInString(comment) > maxCommentLen {
		return fmt.Errorf("the comment is longer than %d characters", maxCommentLen)
	}
	for _, r := range comment {
		if unicode.IsControl(r) {
			return errors.New("the comment contains control characters (such as a tab or a line break)")
		}
	}
	return nil
}

// ErrPrivateKey is returned when a private key is given where its public
// half belongs. The error never quotes the input.
var ErrPrivateKey = errors.New("this is a private key, not a public one; it was not stored")

// minRSABits refuses RSA keys too weak to trust; OpenSSH itself refuses
// those under 1024 bits.
const minRSABits = 2048

// ParseKey parses one public key as it appears in a ".pub" file or an
// authorized_keys line without options: "TYPE BASE64 [COMMENT]". It returns
// the key and its own comment (often user@host). Errors describe the
// problem without quoting the input, which might be a private key pasted by
// mistake.
func ParseKey(text string) (ssh.PublicKey, string, error) {
	text = strings.TrimSpace(text)
	switch {
	case text == "":
		return nil, "", errors.New("the key is empty")
	case strings.Contains(text, "PRIVATE KEY"), strings.HasPrefix(text, "PuTTY-User-Key-File"):
		return nil, "", ErrPrivateKey
	case strings.ContainsAny(text, "\r\n"):
		// One key per client; a second line would also be a second
		// authorized_keys line.
		return nil, "", errors.New("the key spans several lines: give exactly one public key")
	}
	key, comment, options, rest, err := ssh.ParseAuthorizedKey([]byte(text))
	if err != nil {
		return nil, "", errors.New("not an OpenSSH public key: expected \"TYPE BASE64 [COMMENT]\", such as the content of ~/.ssh/id_ed25519.pub")
	}
	if len(options) > 0 {
		return nil, "", errors.New("the key has authorized_keys options before it: give the key alone (nixcache adds the options itself)")
	}
	if len(bytes.TrimSpace(rest)) > 0 {
		return nil, "", errors.New("the key spans several lines: give exactly one public key")
	}
	if err := checkKeyType(key); err != nil {
		return nil, "", err
	}
	return key, comment, nil
}

func checkKeyType(key ssh.PublicKey) error {
	switch key.Type() {
	case ssh.KeyAlgoED25519, ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
		ssh.KeyAlgoSKED25519, ssh.KeyAlgoSKECDSA256:
		return nil
	case ssh.KeyAlgoRSA:
		if ck, ok := key.(ssh.CryptoPublicKey); ok {
			if rsa, ok := ck.CryptoPublicKey().(interface{ Size() int }); ok && rsa.Size()*8 < minRSABits {
				return fmt.Errorf("the RSA key has %d bits; at least %d are needed", rsa.Size()*8, minRSABits)
			}
		}
		return nil
	case ssh.KeyAlgoDSA:
		return errors.New("DSA keys are refused by OpenSSH since 7.0: use an ed25519 key")
	}
	if _, ok := key.(*ssh.Certificate); ok {
		return errors.New("SSH certificates are not supported: give the plain public key")
	}
	return fmt.Errorf("unsupported key type %q: use an ed25519 key", key.Type())
}

// keyText is the key as the registry and authorized_keys write it:
// "TYPE BASE64", without any comment.
func keyText(key ssh.PublicKey) string {
	return strings.TrimSpace(string(ssh.MarshalAuthorizedKey(key)))
}
