//go:build harness

package integration_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/tests/harness"
)

// These tests talk to a real nix-daemon (the harness's private one) and
// compare what the daemon client decodes with what Nix's own tools print.

func dial(t *testing.T) *daemon.Conn {
	t.Helper()
	c, err := daemon.Dial(context.Background(), env.Socket)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func nixStore(t *testing.T, args ...string) string {
	t.Helper()
	r := harness.Run(env.Environ(), "nix-store", args...)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	return strings.TrimSpace(r.Stdout)
}

func TestRealDaemonHandshake(t *testing.T) {
	c := dial(t)
	version := strings.TrimPrefix(nixStore(t, "--version"), "nix-store (Nix) ")
	if c.DaemonVersion < daemon.MinVersion || c.Version() != min(c.DaemonVersion, daemon.ClientVersion) {
		t.Errorf("daemon %s negotiated %s", c.DaemonVersion, c.Version())
	}
	if c.Version().Minor() >= 33 && c.DaemonNixVersion != version {
		t.Errorf("daemon says Nix %q, nix-store says %q", c.DaemonNixVersion, version)
	}
	t.Logf("daemon: Nix %s, protocol %s, trust %s", c.DaemonNixVersion, c.DaemonVersion, c.Trust)
}

func TestRealDaemonPathInfoMatchesNix(t *testing.T) {
	cl, err := env.Build(3)
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t)
	info, err := c.QueryPathInfo(cl.Top)
	if err != nil {
		t.Fatal(err)
	}
	wantHash := nixStore(t, "--query", "--hash", cl.Top)
	if got := "sha256:" + nixbase32.EncodeToString(info.NarHash); got != wantHash {
		t.Errorf("NAR hash %s, nix-store says %s", got, wantHash)
	}
	size, _ := strconv.ParseUint(nixStore(t, "--query", "--size", cl.Top), 10, 64)
	if info.NarSize != size || size == 0 {
		t.Errorf("NAR size %d, nix-store says %d", info.NarSize, size)
	}
	refs := strings.Fields(nixStore(t, "--query", "--references", cl.Top))
	slices.Sort(refs)
	got := slices.Sorted(slices.Values(info.References))
	if !slices.Equal(got, refs) {
		t.Errorf("references %v, nix-store says %v", got, refs)
	}
	if deriver := nixStore(t, "--query", "--deriver", cl.Top); info.Deriver != deriver {
		t.Errorf("deriver %q, nix-store says %q", info.Deriver, deriver)
	}
	if !info.Ultimate {
		t.Errorf("a locally built path is not marked ultimate")
	}

	valid, err := c.IsValidPath(cl.Top)
	if err != nil || !valid {
		t.Errorf("IsValidPath(%s) = %v, %v", cl.Top, valid, err)
	}
	missing := "/nix/store/00000000000000000000000000000000-missing"
	if valid, err := c.IsValidPath(missing); err != nil || valid {
		t.Errorf("IsValidPath(missing) = %v, %v", valid, err)
	}
	if _, err := c.QueryPathInfo(missing); !errors.Is(err, daemon.ErrNotValid) {
		t.Errorf("QueryPathInfo(missing): %v", err)
	}
	vp, err := c.QueryValidPaths([]string{cl.Top, missing})
	if err != nil || !slices.Equal(vp, []string{cl.Top}) {
		t.Errorf("QueryValidPaths = %v, %v", vp, err)
	}
	all, err := c.QueryAllValidPaths()
	if err != nil || !slices.Contains(all, cl.Top) {
		t.Errorf("QueryAllValidPaths: %d paths, %v", len(all), err)
	}
}

func TestRealDaemonPipelinedSignatures(t *testing.T) {
	cl, err := env.Build(4)
	if err != nil {
		t.Fatal(err)
	}
	c := dial(t)
	// Only valid paths: Nix 2.8's daemon dereferences a null path info when
	// asked to sign a missing path, and its connection process dies.
	sig := "test-only-1:" + strings.Repeat("A", 86) + "=="
	reqs := make(chan daemon.Signing, 3)
	for _, p := range cl.Paths[:3] {
		reqs <- daemon.Signing{Path: p, Sigs: []string{sig}}
	}
	close(reqs)
	err = c.AddSignaturesStream(context.Background(), reqs, func(_ daemon.Signing, err error) error { return err })
	if err != nil {
		t.Fatal(err)
	}
	// A missing path in the middle of a batch of queries comes back as
	// ErrNotValid in its place; the others carry the new signature.
	missing := "/nix/store/00000000000000000000000000000000-missing"
	query := []string{cl.Paths[0], missing, cl.Paths[1], cl.Paths[2], cl.Paths[3]}
	var got []string
	err = c.QueryPathInfos(query, func(i int, info *daemon.PathInfo, err error) error {
		switch {
		case errors.Is(err, daemon.ErrNotValid):
			got = append(got, "invalid")
		case err != nil:
			return err
		default:
			got = append(got, fmt.Sprint(slices.Contains(info.Sigs, sig)))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if want := "true invalid true true false"; strings.Join(got, " ") != want {
		t.Errorf("got %q, want %q", strings.Join(got, " "), want)
	}
}
