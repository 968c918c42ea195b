package harness

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// Path is a store path the harness made up, with its NAR: an input-addressed
// path with a fresh random hash part, which no store holds until a test
// puts it there. A push client's machine gets its closures so (Import):
// a path built on this machine would be valid on the server at once, since
// the server's daemon serves the machine's /nix/store.
type Path struct {
	Path       string
	NAR        []byte
	References []string
}

// NewPath makes a path named name holding one regular file: a line naming
// each reference (as a real output would, so Nix's reference scan agrees),
// then size random bytes, which no compression shrinks (an upload's bytes
// on the wire are then about its NAR's).
func NewPath(name string, size int, references ...string) Path {
	var hash [20]byte
	rand.Read(hash[:])
	path := "/nix/store/" + nixbase32.EncodeToString(hash[:]) + "-" + name
	var contents bytes.Buffer
	for _, r := range references {
		fmt.Fprintln(&contents, r)
	}
	filler := make([]byte, size)
	rand.Read(filler)
	contents.Write(filler)
	return Path{Path: path, NAR: NAR(contents.Bytes()), References: references}
}

// Chain makes n paths of about size bytes each, each referring to the one
// before; the last is the top of the closure. Import them in this order.
func Chain(name string, n, size int) []Path {
	var paths []Path
	var refs []string
	for i := 1; i <= n; i++ {
		p := NewPath(fmt.Sprintf("%s-%d", name, i), size, refs...)
		paths = append(paths, p)
		refs = []string{p.Path}
	}
	return paths
}

// ClosureOf is the closure of a chain, Top its last path.
func ClosureOf(paths []Path) Closure {
	c := Closure{Top: paths[len(paths)-1].Path}
	for _, p := range paths {
		c.Paths = append(c.Paths, p.Path)
	}
	return c
}

// NarHash is the NAR's hash as a narinfo writes it, "sha256:nixbase32".
func (p Path) NarHash() string {
	sum := sha256.Sum256(p.NAR)
	return "sha256:" + nixbase32.EncodeToString(sum[:])
}

// HashPart is the path's hash part, what /HASH.narinfo names.
func (p Path) HashPart() string { return filepath.Base(p.Path)[:32] }

// Narinfo is the path's narinfo as a push client sends it in an upload
// (docs/uploads.md): no URL, compression or signatures.
func (p Path) Narinfo() string {
	var refs []string
	for _, r := range p.References {
		refs = append(refs, filepath.Base(r))
	}
	return fmt.Sprintf("StorePath: %s\nNarHash: %s\nNarSize: %d\nReferences: %s\n",
		p.Path, p.NarHash(), len(p.NAR), strings.Join(refs, " "))
}

// NAR is the NAR serialisation of a regular, non-executable file.
func NAR(contents []byte) []byte {
	var b bytes.Buffer
	for _, s := range []string{"nix-archive-1", "(", "type", "regular", "contents"} {
		writeString(&b, []byte(s))
	}
	writeString(&b, contents)
	writeString(&b, []byte(")"))
	return b.Bytes()
}

// Export is paths in `nix-store --export`'s format, which `nix-store
// --import` reads: for each, 1, the NAR, the magic "NIXE", the path, its
// references, an empty deriver and no legacy signature; then 0.
func Export(paths ...Path) []byte {
	var b bytes.Buffer
	for _, p := range paths {
		writeUint(&b, 1)
		b.Write(p.NAR)
		writeUint(&b, 0x4558494e)
		writeString(&b, []byte(p.Path))
		writeUint(&b, uint64(len(p.References)))
		for _, r := range p.References {
			writeString(&b, []byte(r))
		}
		writeString(&b, nil)
		writeUint(&b, 0)
	}
	writeUint(&b, 0)
	return b.Bytes()
}

func writeUint(b *bytes.Buffer, n uint64) {
	var buf [8]byte
	binary.LittleEndian.PutUint64(buf[:], n)
	b.Write(buf[:])
}

// writeString writes Nix's wire string: its length, the bytes, zeros to a
// multiple of 8.
func writeString(b *bytes.Buffer, s []byte) {
	writeUint(b, uint64(len(s)))
	b.Write(s)
	b.Write(make([]byte, (8-len(s)%8)%8))
}
