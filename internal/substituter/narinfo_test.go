package substituter

import (
	"strings"
	"testing"
)

func TestParseNarinfo(t *testing.T) {
	self := storeHash(1) + "-self"
	info := "StorePath: /nix/store/" + self + "\n" +
		"URL: nar/" + narName(1) + "\nCompression: none\nFileHash: sha256:x\nFileSize: 1234\nNarHash: sha256:x\nNarSize: 1234\n" +
		"References: " + self + " " + storeHash(2) + "-dep not-a-path\nSig: k:s\n"
	f := parseNarinfo([]byte(info))
	if f.narFile != narName(1) || f.size != 1234 || len(f.refs) != 1 || f.refs[0] != storeHash(2) {
		t.Errorf("%+v", f)
	}
	// A URL of another shape is not prefetched; a compressed NAR's size
	// is its FileSize, never its NarSize.
	f = parseNarinfo([]byte("URL: nar/../../etc/passwd\nCompression: xz\nNarSize: 99\n"))
	if f.narFile != "" || f.size != 0 {
		t.Errorf("%+v", f)
	}
}

// Whatever the cache sends, prefetching only ever follows base-32 hash
// parts and NAR names of the contract's shape, never more references than
// the narinfo lists, and never a negative size.
func FuzzParseNarinfo(f *testing.F) {
	f.Add([]byte("StorePath: /nix/store/" + storeHash(1) + "-a\nURL: nar/" + narName(1) + "\nFileSize: 5\nReferences: " + storeHash(2) + "-b\n"))
	f.Add([]byte("URL: nar/x\nNarSize: -1\nReferences: a b c\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n := parseNarinfo(data)
		if n.size < 0 {
			t.Fatalf("size %d", n.size)
		}
		if n.narFile != "" && !validNARFile(n.narFile) {
			t.Fatalf("NAR %q", n.narFile)
		}
		if len(n.refs) > len(strings.Fields(string(data))) {
			t.Fatalf("%d references from %d words", len(n.refs), len(strings.Fields(string(data))))
		}
		for _, r := range n.refs {
			if !isNix32(r, storeHashLen) {
				t.Fatalf("reference %q", r)
			}
		}
	})
}
