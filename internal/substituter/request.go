package substituter

import "strings"

// kind is what a request asks the cache for.
type kind int

const (
	cacheInfo kind = iota + 1
	narInfo
	nar
)

// request is a request Nix may send, reduced to what names the file: the
// upstream path is rebuilt from it, so nothing else in the request (query,
// dot segments, escapes) ever reaches the cache.
type request struct {
	kind kind
	// name is the store path's hash part for narInfo, the NAR's file name
	// ("HASH-NARHASH.nar") for nar.
	name string
}

// nix32 is the alphabet of Nix's base-32 hashes.
const nix32 = "0123456789abcdfghijklmnpqrsvwxyz"

const (
	storeHashLen = 32 // a store path's hash part
	narHashLen   = 52 // a SHA-256 NAR hash in base 32
)

func isNix32(s string, n int) bool {
	if len(s) != n {
		return false
	}
	for i := 0; i < len(s); i++ {
		if strings.IndexByte(nix32, s[i]) < 0 {
			return false
		}
	}
	return true
}

// parseRequest accepts exactly the paths of the contract with the cache.
func parseRequest(path string) (request, bool) {
	if path == "/nix-cache-info" {
		return request{kind: cacheInfo}, true
	}
	if h, ok := strings.CutSuffix(strings.TrimPrefix(path, "/"), ".narinfo"); ok && isNix32(h, storeHashLen) && path[0] == '/' {
		return request{kind: narInfo, name: h}, true
	}
	if f, ok := strings.CutPrefix(path, "/nar/"); ok && validNARFile(f) {
		return request{kind: nar, name: f}, true
	}
	return request{}, false
}

// validNARFile reports whether f is "STOREHASH-NARHASH.nar".
func validNARFile(f string) bool {
	base, ok := strings.CutSuffix(f, ".nar")
	if !ok || len(base) != storeHashLen+1+narHashLen || base[storeHashLen] != '-' {
		return false
	}
	return isNix32(base[:storeHashLen], storeHashLen) && isNix32(base[storeHashLen+1:], narHashLen)
}

// upstreamPath is the path asked of the cache for r.
func (r request) upstreamPath() string {
	switch r.kind {
	case narInfo:
		return "/" + r.name + ".narinfo"
	case nar:
		return "/nar/" + r.name
	}
	return "/nix-cache-info"
}
