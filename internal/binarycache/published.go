package binarycache

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nixcache/nixcache/internal/daemon"
)

// Published is what a cache in published mode serves: the closures of the
// store paths that the symlinks under Roots point to (GC roots, as
// `nix-store --add-root` and the publisher make them). Anything else is
// answered as absent.
//
// The set is computed through the daemon and computed again when a
// directory under Roots changed (its mtime: a root added or removed) or it
// is older than maxAge (a root that is a link to a profile whose target
// changed changes no directory). A request costs a stat of each directory
// the last computation saw, not a walk of the roots.
type Published struct {
	Roots string

	mu       sync.Mutex
	paths    map[string]bool
	dirs     []dirStamp
	computed time.Time
}

// dirStamp is a directory under Roots as the last computation saw it; a
// zero mtime, Roots missing.
type dirStamp struct {
	path  string
	mtime time.Time
}

// maxAge bounds how long a published set is trusted without a look at the
// roots.
const maxAge = 10 * time.Second

// Limits of the walk under Roots: a roots directory is a handful of
// directories (one per pushing client) and their links.
const (
	maxRootDepth = 4
	maxRoots     = 1 << 20
)

// Contains says whether path is published. c is the daemon connection to
// compute the set with, when it must be.
func (p *Published) Contains(c *daemon.Conn, path string) (bool, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.paths == nil || p.changed() || time.Since(p.computed) > maxAge {
		computed := time.Now()
		paths, dirs, err := p.compute(c)
		if err != nil {
			return false, err
		}
		p.paths, p.dirs, p.computed = paths, dirs, computed
	}
	return p.paths[path], nil
}

// changed says whether a directory the last computation saw changed: a root
// or a directory added or removed in it, or the directory itself gone (or,
// for a missing Roots, made). A directory made in one changes that one.
func (p *Published) changed() bool {
	for _, d := range p.dirs {
		fi, err := os.Lstat(d.path)
		if err != nil || !fi.IsDir() {
			if d.mtime.IsZero() && errors.Is(err, fs.ErrNotExist) {
				continue
			}
			return true
		}
		if !fi.ModTime().Equal(d.mtime) {
			return true
		}
	}
	return false
}

// walk visits the directories (not through symlinks) and the symlinks
// under Roots.
func (p *Published) walk(dir func(string, fs.FileInfo), link func(string)) error {
	n := 0
	var visit func(string, int) error
	visit = func(d string, depth int) error {
		fi, err := os.Lstat(d)
		if err != nil {
			return err
		}
		if dir != nil {
			dir(d, fi)
		}
		entries, err := os.ReadDir(d)
		if err != nil {
			return err
		}
		for _, e := range entries {
			if n++; n > maxRoots {
				return fmt.Errorf("more than %d entries under the roots directory %q", maxRoots, p.Roots)
			}
			full := filepath.Join(d, e.Name())
			switch {
			case e.Type()&fs.ModeSymlink != 0:
				if link != nil {
					link(full)
				}
			case e.IsDir() && depth < maxRootDepth:
				if err := visit(full, depth+1); err != nil {
					return err
				}
			}
		}
		return nil
	}
	err := visit(p.Roots, 0)
	if errors.Is(err, fs.ErrNotExist) {
		// No roots: nothing is published.
		return nil
	}
	return err
}

// compute is the closure of what the roots point to, and the directories
// it read them from, each stamped before it was read.
func (p *Published) compute(c *daemon.Conn) (map[string]bool, []dirStamp, error) {
	var tops []string
	var dirs []dirStamp
	seen := map[string]bool{}
	err := p.walk(func(dir string, fi fs.FileInfo) {
		dirs = append(dirs, dirStamp{dir, fi.ModTime()})
	}, func(link string) {
		if top := rootTarget(link); top != "" && !seen[top] {
			seen[top] = true
			tops = append(tops, top)
		}
	})
	if err != nil {
		return nil, nil, err
	}
	if len(dirs) == 0 {
		// No roots directory: nothing is published until it is made.
		dirs = []dirStamp{{path: p.Roots}}
	}
	closure := map[string]bool{}
	level := tops
	for len(level) > 0 {
		var next []string
		err := c.QueryPathInfos(level, func(_ int, info *daemon.PathInfo, err error) error {
			if err != nil {
				// Not valid (a root to a path being collected, or to
				// something never valid): not published.
				if errors.Is(err, daemon.ErrNotValid) {
					return nil
				}
				return err
			}
			closure[info.Path] = true
			for _, ref := range info.References {
				if !seen[ref] {
					seen[ref] = true
					next = append(next, ref)
				}
			}
			return nil
		})
		if err != nil {
			return nil, nil, err
		}
		level = next
	}
	return closure, dirs, nil
}

// maxRootHops bounds the links outside the store followed from a root.
const maxRootHops = 40

// rootTarget is the store path a root names, read as Nix's garbage
// collector reads one: the link's target, if it is in the store; else, if
// that target is a link (a profile), its target, and so on. It never
// resolves anything inside the store: a store path may itself be a symlink
// (a push client chooses its contents), and what it points to is not what
// was published. "" when the link names no store path.
func rootTarget(link string) string {
	for range maxRootHops {
		target, err := os.Readlink(link)
		if err != nil {
			return ""
		}
		if strings.HasPrefix(target, StoreDir+"/") {
			return storePathOf(target)
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(link), target)
		}
		if strings.HasPrefix(target, StoreDir+"/") {
			return storePathOf(target)
		}
		fi, err := os.Lstat(target)
		if err != nil || fi.Mode().Type() != fs.ModeSymlink {
			return "" // dangling, or not a link to the store: roots nothing
		}
		link = target
	}
	return ""
}

// storePathOf is the store path that file is or is inside of, or "".
func storePathOf(file string) string {
	rest, ok := strings.CutPrefix(file, StoreDir+"/")
	if !ok {
		return ""
	}
	name, _, _ := strings.Cut(rest, "/")
	if len(name) <= hashLen+1 || !validHash(name[:hashLen]) || name[hashLen] != '-' {
		return ""
	}
	return StoreDir + "/" + name
}
