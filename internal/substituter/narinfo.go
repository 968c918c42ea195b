package substituter

import (
	"strconv"
	"strings"
)

// maxNarinfo caps a narinfo read from the cache: real ones are a few KB
// even with hundreds of references.
const maxNarinfo = 1 << 20

// narinfoFacts is what prefetching needs from a narinfo. Nix reads and
// verifies the whole narinfo itself; nothing here is trusted for more than
// deciding what to fetch ahead.
type narinfoFacts struct {
	// narFile is the NAR's file name under nar/, when the URL has the
	// contract's shape; empty otherwise (the NAR is then not prefetched).
	narFile string
	// size is the NAR's size as served (FileSize, else NarSize when
	// uncompressed); 0 when unknown.
	size int64
	// refs are the hash parts of the path's references, itself excluded.
	refs []string
	// uncompressed: Compression is none (or absent), as nixcache serve
	// writes it.
	uncompressed bool
	// self is the hash part of the narinfo's own store path.
	self string
}

// parseNarinfo reads the fields prefetching uses and ignores the rest; a
// malformed field leaves its fact empty rather than failing, since Nix, not
// this proxy, judges narinfos.
func parseNarinfo(data []byte) narinfoFacts {
	var f narinfoFacts
	var self, compression string
	var narSize, fileSize int64
	var refs []string
	for line := range strings.SplitSeq(string(data), "\n") {
		key, value, ok := strings.Cut(line, ": ")
		if !ok {
			continue
		}
		switch key {
		case "StorePath":
			self = storeHashOf(value[strings.LastIndexByte(value, '/')+1:])
		case "URL":
			if file, ok := strings.CutPrefix(value, "nar/"); ok && validNARFile(file) {
				f.narFile = file
			}
		case "Compression":
			compression = value
		case "NarSize":
			narSize = parseSize(value)
		case "FileSize":
			fileSize = parseSize(value)
		case "References":
			refs = strings.Fields(value)
		}
	}
	f.self = self
	f.uncompressed = compression == "" || compression == "none"
	f.size = fileSize
	if f.size == 0 && f.uncompressed {
		f.size = narSize
	}
	for _, r := range refs {
		if h := storeHashOf(r); h != "" && h != self {
			f.refs = append(f.refs, h)
		}
	}
	return f
}

// storeHashOf is the hash part of a store path's base name
// ("HASH-name"), or "" when it has none.
func storeHashOf(base string) string {
	if len(base) < storeHashLen+2 || base[storeHashLen] != '-' || !isNix32(base[:storeHashLen], storeHashLen) {
		return ""
	}
	return base[:storeHashLen]
}

func parseSize(s string) int64 {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0
	}
	return n
}
