package publish

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nix-community/go-nix/pkg/storepath"

	"github.com/nixcache/nixcache/internal/binarycache"
)

// maxNarinfo caps the narinfo part of an upload (docs/uploads.md): the
// cache's limit, which serve also reads ahead by.
const maxNarinfo = binarycache.MaxUploadNarinfo

// hashPartLen is the length of a store path's hash part in nix32.
const hashPartLen = 32

// claim is what an upload's narinfo says about its path. Paths are full
// store paths: the narinfo's References and Deriver are base names.
type claim struct {
	Path       string
	NarHash    []byte
	NarSize    uint64
	References []string
	Deriver    string
	CA         string
}

// errNarinfoTooLong is a narinfo part over maxNarinfo.
var errNarinfoTooLong = fmt.Errorf("the narinfo is longer than %d KiB", maxNarinfo>>10)

// readNarinfo reads the narinfo part of an upload body: lines up to the
// first empty one, which the NAR follows. It never reads past that line.
func readNarinfo(r *bufio.Reader) ([]byte, error) {
	var buf bytes.Buffer
	for {
		line, err := r.ReadSlice('\n')
		if buf.Len()+len(line) > maxNarinfo {
			return nil, errNarinfoTooLong
		}
		if errors.Is(err, bufio.ErrBufferFull) {
			buf.Write(line)
			continue
		}
		if err == io.EOF {
			return nil, errors.New("the upload ended before the empty line that ends its narinfo")
		}
		if err != nil {
			return nil, err
		}
		if len(line) == 1 && (buf.Len() == 0 || buf.Bytes()[buf.Len()-1] == '\n') {
			return buf.Bytes(), nil
		}
		buf.Write(line)
	}
}

// parseNarinfo checks the fields the import uses, as Nix writes them. It
// is its own parser rather than go-nix's narinfo.Parse because that one
// fails on a malformed Sig line (which the cache ignores: it signs itself),
// refuses keys it does not know (Nix ignores them), takes a repeated field
// silently and gives no line numbers. URL, Compression, FileHash,
// FileSize, Sig and System are ignored; so is any key Nix may add.
func parseNarinfo(text []byte, storeDir string) (*claim, error) {
	c := &claim{}
	seen := map[string]int{}
	for i, line := range strings.Split(strings.TrimSuffix(string(text), "\n"), "\n") {
		n := i + 1
		key, value, ok := strings.Cut(line, ": ")
		if !ok {
			return nil, fmt.Errorf("narinfo line %d is not \"Key: value\"", n)
		}
		switch key {
		case "StorePath", "NarHash", "NarSize", "References", "Deriver", "CA":
			if first, dup := seen[key]; dup {
				return nil, fmt.Errorf("narinfo line %d: %s again (first on line %d)", n, key, first)
			}
			seen[key] = n
		}
		var err error
		switch key {
		case "StorePath":
			c.Path = value
			err = checkStorePath(value, storeDir)
		case "NarHash":
			c.NarHash, err = parseNarHash(value)
		case "NarSize":
			c.NarSize, err = strconv.ParseUint(value, 10, 64)
			if err == nil && c.NarSize == 0 {
				err = errors.New("a NAR is never empty")
			}
			if err != nil {
				err = fmt.Errorf("NarSize: %v", err)
			}
		case "References":
			// A set, as Nix has it: a reference given twice would be
			// signed twice in the fingerprint, which the daemon, counting
			// it once, would refuse as a bad signature.
			given := map[string]bool{}
			for ref := range strings.FieldsSeq(value) {
				if err = checkBaseName(ref); err != nil {
					break
				}
				if given[ref] {
					err = fmt.Errorf("reference %s is given twice", ref)
					break
				}
				given[ref] = true
				c.References = append(c.References, storeDir+"/"+ref)
			}
		case "Deriver":
			if value != "unknown-deriver" {
				if err = checkBaseName(value); err == nil {
					c.Deriver = storeDir + "/" + value
				}
			}
		case "CA":
			c.CA = value
			err = checkCA(value)
		}
		if err != nil {
			return nil, fmt.Errorf("narinfo line %d: %v", n, err)
		}
	}
	for _, key := range []string{"StorePath", "NarHash", "NarSize"} {
		if _, ok := seen[key]; !ok {
			return nil, fmt.Errorf("the narinfo has no %s", key)
		}
	}
	return c, nil
}

// checkStorePath accepts a path directly in storeDir with a valid base name.
func checkStorePath(p, storeDir string) error {
	base, ok := strings.CutPrefix(p, storeDir+"/")
	if !ok {
		return fmt.Errorf("%q is not in the store %s", p, storeDir)
	}
	return checkBaseName(base)
}

// checkBaseName accepts "HASH-name" as Nix's StorePath does: a 32-character
// nix32 hash part and a name of Nix's characters.
func checkBaseName(base string) error {
	// FromString cleans base (path.Join) before it matches it, so
	// "HASH-a/../HASH-b" and "HASH-a/." would pass, and the daemon would
	// canonicalise them to a path other than the one checked.
	if _, err := storepath.FromString(base); err != nil || len(base) > 211 || strings.Contains(base, "/") {
		return fmt.Errorf("%q is not a store path name", base)
	}
	return nil
}

var sha256Algo = nixhash.SHA256

func parseNarHash(s string) ([]byte, error) {
	if !strings.HasPrefix(s, "sha256:") {
		return nil, errors.New("NarHash is not a sha256: hash")
	}
	h, err := nixhash.ParseAny(s, &sha256Algo)
	if err != nil || len(h.Digest()) != sha256.Size {
		return nil, errors.New("NarHash is not a valid sha256 hash")
	}
	return h.Digest(), nil
}

// checkCA accepts the content-address forms Nix renders (text:, fixed:);
// the daemon checks that one really describes the path. Anything else would
// make the daemon drop the connection without a word.
func checkCA(ca string) error {
	if !strings.HasPrefix(ca, "text:") && !strings.HasPrefix(ca, "fixed:") {
		return fmt.Errorf("CA %q is not text:... or fixed:...", ca)
	}
	for _, r := range ca {
		if r <= ' ' || r > '~' {
			return errors.New("CA holds a character Nix never writes there")
		}
	}
	return nil
}
