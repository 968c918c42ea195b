package registry

import (
	"crypto/ed25519"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"
)

// registryText renders n clients with deterministic ed25519 keys, the way
// Marshal writes them.
func registryText(tb testing.TB, n int) []byte {
	tb.Helper()
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nversion = %d\n", Header, Version)
	for i := range n {
		var seed [ed25519.SeedSize]byte
		binary.BigEndian.PutUint64(seed[:], uint64(i))
		pub, err := ssh.NewPublicKey(ed25519.NewKeyFromSeed(seed[:]).Public())
		if err != nil {
			tb.Fatal(err)
		}
		fmt.Fprintf(&b, "\n[clients.client-%05d]\nkey = %q\ncomment = \"rack %d\"\n", i, keyText(pub), i%40)
	}
	return []byte(b.String())
}

func BenchmarkParse10k(b *testing.B) {
	text := registryText(b, 10_000)
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(text); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkAuthorizedKeys10k(b *testing.B) {
	r, err := Parse(registryText(b, 10_000))
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for b.Loop() {
		if _, err := r.AuthorizedKeys(SSHNG, ""); err != nil {
			b.Fatal(err)
		}
	}
}
