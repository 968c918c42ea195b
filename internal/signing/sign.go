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
//
// Path info is read over several connections while one more connection
// adds the signatures as they are made, so the daemon's reads and its
// database writes overlap. Only paths just read as valid are signed: Nix
// 2.8's daemon crashes its connection when asked to sign a missing path.
func (s Store) Sign(ctx context.Context, key nixkey.SecretKey, paths []string, dryRun bool) (*SignReport, error) {
	rep := &SignReport{Key: key.Name(), DryRun: dryRun, Signed: []string{}, Skipped: []Skipped{}}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var mu sync.Mutex // guards rep.Skipped and rep.AlreadySigned
	todo := make(chan daemon.Signing, 1024)
	writerDone := make(chan struct{})
	if dryRun {
		go func() {
			for r := range todo {
				rep.Signed = append(rep.Signed, r.Path)
			}
			close(writerDone)
		}()
	} else {
		conn, err := s.dial(ctx)
		if err != nil {
			return nil, err
		}
		defer conn.Close()
		go func() {
			defer close(writerDone)
			err := conn.AddSignaturesStream(ctx, todo, func(r daemon.Signing, err error) error {
				if err != nil {
					if strings.Contains(err.Error(), "not privileged") {
						return ErrNotTrusted
					}
					return fmt.Errorf("adding a signature to %s: %w", r.Path, err)
				}
				rep.Signed = append(rep.Signed, r.Path) // only this goroutine writes Signed
				return nil
			})
			if err != nil {
				cancel(err)
			}
		}()
	}
	err := s.eachInfo(ctx, paths, func(info *daemon.PathInfo, path string, err error) error {
		var sig string
		if err == nil {
			sig, err = signatureFor(key, info)
		}
		switch {
		case err != nil:
			mu.Lock()
			rep.Skipped = append(rep.Skipped, Skipped{path, reason(err)})
			mu.Unlock()
		case slices.Contains(info.Sigs, sig):
			mu.Lock()
			rep.AlreadySigned++
			mu.Unlock()
		default:
			select {
			case todo <- daemon.Signing{Path: path, Sigs: []string{sig}}:
			case <-ctx.Done():
				return context.Cause(ctx)
			}
		}
		return nil
	})
	close(todo)
	<-writerDone
	if err == nil {
		err = context.Cause(ctx)
	}
	if err != nil {
		return nil, err
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
