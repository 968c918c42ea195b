package signing

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/nixkey"
)

// Untrusted is a path without a valid signature by a trusted key.
type Untrusted struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// VerifyReport lists the paths that failed; every other path checked has a
// valid signature by one of the trusted keys.
type VerifyReport struct {
	Checked   int         `json:"checked"`
	Valid     int         `json:"valid"`
	Untrusted []Untrusted `json:"untrusted"`
}

// Verify checks every path's signatures against its fingerprint. Unlike
// `nix store verify`, content-addressed paths get no pass: a cache signs
// everything it serves.
func (s Store) Verify(ctx context.Context, keys []nixkey.PublicKey, paths []string) (*VerifyReport, error) {
	rep := &VerifyReport{Checked: len(paths), Untrusted: []Untrusted{}}
	var mu sync.Mutex
	check := func(info *daemon.PathInfo, path string, err error) error {
		why := ""
		if err != nil {
			why = reason(err)
		} else {
			why = UntrustedReason(info, keys)
		}
		mu.Lock()
		defer mu.Unlock()
		if why == "" {
			rep.Valid++
		} else {
			rep.Untrusted = append(rep.Untrusted, Untrusted{path, why})
		}
		return nil
	}
	if err := s.eachInfo(ctx, paths, check); err != nil {
		return nil, err
	}
	slices.SortFunc(rep.Untrusted, func(a, b Untrusted) int { return strings.Compare(a.Path, b.Path) })
	return rep, nil
}

// UntrustedReason is "" when info has a valid signature by one of keys, and
// otherwise says what is wrong.
func UntrustedReason(info *daemon.PathInfo, keys []nixkey.PublicKey) string {
	if len(info.Sigs) == 0 {
		return "no signatures"
	}
	fp, err := nixkey.Fingerprint(info.Path, info.NarHash, info.NarSize, info.References)
	if err != nil {
		return err.Error()
	}
	var invalid []string
	for _, text := range info.Sigs {
		sig, err := nixkey.ParseSignature(text)
		if err != nil {
			continue
		}
		if nixkey.Verify(fp, sig, keys) {
			return ""
		}
		if slices.ContainsFunc(keys, func(k nixkey.PublicKey) bool { return k.Name == sig.Name }) {
			invalid = append(invalid, sig.Name)
		}
	}
	if len(invalid) > 0 {
		return fmt.Sprintf("signature by trusted key %s does not match the path's contents", strings.Join(invalid, ", "))
	}
	return "no signature by a trusted key"
}
