package signing

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/nixkey"
)

// Skipped is a path that was left alone, and why.
type Skipped struct {
	Path   string `json:"path"`
	Reason string `json:"reason"`
}

// SignReport says what Sign did (or, in a dry run, would do).
type SignReport struct {
	Key           string    `json:"key"`
	DryRun        bool      `json:"dryRun"`
	Signed        []string  `json:"signed"`
	AlreadySigned int       `json:"alreadySigned"`
	Skipped       []Skipped `json:"skipped"`
}

// ErrNotTrusted means the daemon does not let this user add signatures
// (Nix before 2.17 allows it to trusted users only).
var ErrNotTrusted = errors.New("the Nix daemon does not trust this user, so it refuses to add signatures")

// Sign adds key's signature to every path in paths that lacks it. As with
// `nix store sign`, a path counts as signed when it carries exactly the
// signature this key makes for it; ed25519 is deterministic, so that is the
// signature Nix would add.
func (s Store) Sign(ctx context.Context, key nixkey.SecretKey, paths []string, dryRun bool) (*SignReport, error) {
	rep := &SignReport{Key: key.Name(), DryRun: dryRun, Signed: []string{}, Skipped: []Skipped{}}
	n := s.conns(len(paths))
	pending := make([][]daemon.Signing, n)
	var mu sync.Mutex // guards rep
	sign := func(w int, info *daemon.PathInfo, path string, err error) error {
		var sig string
		if err == nil {
			sig, err = signatureFor(key, info)
		}
		if err != nil {
			mu.Lock()
			rep.Skipped = append(rep.Skipped, Skipped{path, reason(err)})
			mu.Unlock()
			return nil
		}
		if slices.Contains(info.Sigs, sig) {
			mu.Lock()
			rep.AlreadySigned++
			mu.Unlock()
			return nil
		}
		pending[w] = append(pending[w], daemon.Signing{Path: path, Sigs: []string{sig}})
		return nil
	}
	write := func(w int, conn *daemon.Conn) error {
		reqs := pending[w]
		if dryRun || len(reqs) == 0 {
			return nil
		}
		return conn.AddSignaturesBatch(reqs, func(i int, err error) error {
			if err != nil {
				if strings.Contains(err.Error(), "not privileged") {
					return ErrNotTrusted
				}
				return fmt.Errorf("adding a signature to %s: %w", reqs[i].Path, err)
			}
			return nil
		})
	}
	if err := s.eachInfo(ctx, paths, sign, write); err != nil {
		return nil, err
	}
	for _, reqs := range pending {
		for _, r := range reqs {
			rep.Signed = append(rep.Signed, r.Path)
		}
	}
	slices.Sort(rep.Signed)
	slices.SortFunc(rep.Skipped, func(a, b Skipped) int { return strings.Compare(a.Path, b.Path) })
	return rep, nil
}

func signatureFor(key nixkey.SecretKey, info *daemon.PathInfo) (string, error) {
	fp, err := nixkey.Fingerprint(info.Path, info.NarHash, info.NarSize, info.References)
	if err != nil {
		return "", err
	}
	return key.Sign(fp).String(), nil
}

func reason(err error) string {
	if errors.Is(err, daemon.ErrNotValid) {
		return "no longer valid in the store"
	}
	return err.Error()
}
