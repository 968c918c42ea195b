package nixkey

import (
	"crypto/ed25519"
	"crypto/sha256"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// Fingerprint is what Nix signs for a store path, as ValidPathInfo::fingerprint
// in Nix's path-info.cc builds it:
//
//	1;<store path>;sha256:<nix32 nar hash>;<nar size>;<comma-separated sorted full reference paths>
//
// go-nix's narinfo.Fingerprint assumes /nix/store and the references' order,
// so this one takes full paths and sorts them itself, as Nix's StorePathSet does.
func Fingerprint(storePath string, narHash []byte, narSize uint64, references []string) (string, error) {
	if len(narHash) != sha256.Size {
		return "", fmt.Errorf("NAR hash of %s is %d bytes, not a SHA-256 hash", storePath, len(narHash))
	}
	if narSize == 0 {
		// Nix refuses too: "cannot calculate fingerprint of path ... because its size is not known".
		return "", errors.New("NAR size is not known")
	}
	refs := slices.Clone(references)
	slices.Sort(refs)
	var b strings.Builder
	b.Grow(len(storePath) + 80 + len(refs)*(len(storePath)+1))
	b.WriteString("1;")
	b.WriteString(storePath)
	b.WriteString(";sha256:")
	b.WriteString(nixbase32.EncodeToString(narHash))
	b.WriteByte(';')
	b.WriteString(strconv.FormatUint(narSize, 10))
	b.WriteByte(';')
	b.WriteString(strings.Join(refs, ","))
	return b.String(), nil
}

// Verify reports whether sig is a valid signature of fingerprint by one of
// keys. Signatures and keys pair up by name, as in Nix.
func Verify(fingerprint string, sig Signature, keys []PublicKey) bool {
	for _, k := range keys {
		if k.Name == sig.Name && ed25519.Verify(k.Data, []byte(fingerprint), sig.Data) {
			return true
		}
	}
	return false
}
