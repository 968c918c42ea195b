// Package binarycache serves a Nix store as Nix's binary-cache HTTP API
// (/nix-cache-info, HASH.narinfo, nar/...), answering from the Nix daemon and
// streaming NARs as the daemon dumps them. It is what `nixcache serve` speaks
// on an SSH channel, and it owns the narinfo format.
package binarycache

import (
	"fmt"
	"path"
	"slices"
	"strconv"
	"strings"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/nixcache/nixcache/internal/daemon"
)

// StoreDir is the only store directory served.
const StoreDir = "/nix/store"

// hashLen is the length of a store path's hash part in base32.
const hashLen = 32

// NarURL is where a path's NAR is served, relative to the cache's root.
// Nix's own caches name the NAR by its file hash alone; this name carries
// the store path's hash part too, so that any channel can serve it without
// remembering the narinfo it answered. Nix treats the URL as opaque.
func NarURL(info *daemon.PathInfo) string {
	return "nar/" + hashPart(info.Path) + "-" + nixbase32.EncodeToString(info.NarHash) + ".nar"
}

// NarInfo renders info as Nix writes it into a `file://…?compression=none`
// cache, field for field and in Nix's order (NarInfo::to_string): the NAR is
// stored uncompressed, so its file hash and size are the NAR's. Only the URL
// differs (NarURL).
func NarInfo(info *daemon.PathInfo) string {
	narHash := "sha256:" + nixbase32.EncodeToString(info.NarHash)
	size := strconv.FormatUint(info.NarSize, 10)
	var b strings.Builder
	field := func(name, value string) { b.WriteString(name + ": " + value + "\n") }
	field("StorePath", info.Path)
	field("URL", NarURL(info))
	field("Compression", "none")
	field("FileHash", narHash)
	field("FileSize", size)
	field("NarHash", narHash)
	field("NarSize", size)
	// Nix keeps references in a set ordered by base name.
	refs := make([]string, len(info.References))
	for i, r := range info.References {
		refs[i] = path.Base(r)
	}
	slices.Sort(refs)
	field("References", strings.Join(refs, " "))
	if info.Deriver != "" {
		field("Deriver", path.Base(info.Deriver))
	}
	for _, s := range info.Sigs {
		field("Sig", s)
	}
	if info.CA != "" {
		field("CA", info.CA)
	}
	return b.String()
}

// CacheInfo is /nix-cache-info. Priority 30 puts the cache before
// cache.nixos.org (40), as a private cache of local builds should be.
const CacheInfo = "StoreDir: " + StoreDir + "\nWantMassQuery: 1\nPriority: 30\n"

func hashPart(storePath string) string {
	base := path.Base(storePath)
	if len(base) < hashLen {
		return base
	}
	return base[:hashLen]
}

// validHash reports whether s is a store path hash part: 32 characters of
// Nix's base32 alphabet.
func validHash(s string) bool {
	if len(s) != hashLen {
		return false
	}
	_, err := nixbase32.DecodeString(s)
	return err == nil
}

// parseNarName splits "HASH-NARHASH.nar" into the store path's hash part
// and the NAR's SHA-256 digest.
func parseNarName(name string) (hash string, narHash []byte, err error) {
	stem, ok := strings.CutSuffix(name, ".nar")
	if !ok {
		return "", nil, fmt.Errorf("not a .nar")
	}
	hash, nh, ok := strings.Cut(stem, "-")
	if !ok || !validHash(hash) || len(nh) != 52 {
		return "", nil, fmt.Errorf("not HASH-NARHASH.nar")
	}
	narHash, err = nixbase32.DecodeString(nh)
	return hash, narHash, err
}
