// Package signing signs and verifies store paths through the Nix daemon:
// it chooses the paths, reads their metadata in pipelined batches over a few
// daemon connections, computes Nix's fingerprints and signs or checks them.
package signing

import (
	"context"
	"fmt"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/nix-community/go-nix/pkg/storepath"

	"github.com/nixcache/nixcache/internal/daemon"
)

// Store says how to reach the daemon and how hard to work it.
type Store struct {
	Socket string
	// Progress, when set, is called from worker goroutines as paths are done.
	Progress func(done, total int)
}

func (s Store) dial(ctx context.Context) (*daemon.Conn, error) {
	return daemon.Dial(ctx, s.Socket)
}

// conns is how many connections read the path info of n paths at once
// (Sign opens one more to write); each is served by a daemon process of its
// own, so more than the CPUs can run brings nothing.
func (s Store) conns(n int) int {
	c := min(4, max(2, runtime.NumCPU()))
	// A connection costs a daemon process; small jobs do not need many.
	return max(1, min(c, n/256+1))
}

// StorePath turns a command-line argument into the store path it names: a
// store path, a file inside one, or a symlink such as ./result pointing into
// the store.
func StorePath(arg string) (string, error) {
	p, err := filepath.Abs(arg)
	if err != nil {
		return "", err
	}
	if !strings.HasPrefix(p, storepath.StoreDir+"/") {
		resolved, err := filepath.EvalSymlinks(p)
		if err != nil {
			return "", fmt.Errorf("%q is not in %s and cannot be resolved: %w", arg, storepath.StoreDir, err)
		}
		p = resolved
	}
	rest, ok := strings.CutPrefix(p, storepath.StoreDir+"/")
	if !ok {
		return "", fmt.Errorf("%q is not in the Nix store (%s)", arg, storepath.StoreDir)
	}
	name, _, _ := strings.Cut(rest, "/")
	full := storepath.StoreDir + "/" + name
	if err := storepath.Validate(full); err != nil {
		return "", fmt.Errorf("%q is not a valid store path name", arg)
	}
	return full, nil
}

// Select returns the paths a command works on: all valid paths, or the
// given arguments (which must all be valid), optionally with their closure.
// The result is sorted and free of duplicates.
func (s Store) Select(ctx context.Context, all bool, args []string, recursive bool) ([]string, error) {
	conn, err := s.dial(ctx)
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	if all {
		paths, err := conn.QueryAllValidPaths()
		slices.Sort(paths)
		return paths, err
	}
	var paths []string
	for _, a := range args {
		p, err := StorePath(a)
		if err != nil {
			return nil, err
		}
		paths = append(paths, p)
	}
	slices.Sort(paths)
	paths = slices.Compact(paths)
	valid, err := conn.QueryValidPaths(paths)
	if err != nil {
		return nil, err
	}
	if len(valid) != len(paths) {
		for _, p := range paths {
			if !slices.Contains(valid, p) {
				return nil, fmt.Errorf("%s is not valid in the store (not built or substituted here)", p)
			}
		}
	}
	if recursive {
		return closure(conn, paths)
	}
	return paths, nil
}

// closure follows references breadth-first, one pipelined batch per level.
func closure(conn *daemon.Conn, roots []string) ([]string, error) {
	seen := make(map[string]bool, len(roots))
	frontier := slices.Clone(roots)
	for _, p := range roots {
		seen[p] = true
	}
	for len(frontier) > 0 {
		var next []string
		err := conn.QueryPathInfos(frontier, func(i int, info *daemon.PathInfo, err error) error {
			if err != nil {
				return fmt.Errorf("%s: %w", frontier[i], err)
			}
			for _, r := range info.References {
				if !seen[r] {
					seen[r] = true
					next = append(next, r)
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
		frontier = next
	}
	out := make([]string, 0, len(seen))
	for p := range seen {
		out = append(out, p)
	}
	slices.Sort(out)
	return out, nil
}

// eachInfo reads the metadata of paths over several connections, calling
// fn for each path once, concurrently from one goroutine per connection.
// Paths that vanished meanwhile come with ErrNotValid.
func (s Store) eachInfo(ctx context.Context, paths []string, fn func(info *daemon.PathInfo, path string, err error) error) error {
	n := s.conns(len(paths))
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var done atomic.Int64
	var wg sync.WaitGroup
	for w := range n {
		chunk := paths[w*len(paths)/n : (w+1)*len(paths)/n]
		wg.Go(func() {
			conn, err := s.dial(ctx)
			if err == nil {
				defer conn.Close()
				err = conn.QueryPathInfos(chunk, func(i int, info *daemon.PathInfo, err error) error {
					if err := fn(info, chunk[i], err); err != nil {
						return err
					}
					if d := done.Add(1); s.Progress != nil && (d%64 == 0 || int(d) == len(paths)) {
						s.Progress(int(d), len(paths))
					}
					return ctx.Err()
				})
			}
			if err != nil {
				cancel(err)
			}
		})
	}
	wg.Wait()
	return context.Cause(ctx)
}
