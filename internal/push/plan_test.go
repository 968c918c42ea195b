package push

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/internal/daemon"
)

// storePath makes a store path named name with a hash part of its own.
func storePath(name string) string {
	h := strings.Repeat("0", 32-len(name)) + name
	h = strings.NewReplacer("e", "0", "o", "1", "u", "2", "t", "3").Replace(h)
	return "/nix/store/" + h + "-" + name
}

// graph makes path infos from "name: ref ref" lines; names are short.
func graph(lines ...string) []*daemon.PathInfo {
	var infos []*daemon.PathInfo
	for _, l := range lines {
		name, refs, _ := strings.Cut(l, ":")
		info := &daemon.PathInfo{Path: storePath(name), NarSize: 10, NarHash: make([]byte, 32)}
		for _, r := range strings.Fields(refs) {
			info.References = append(info.References, storePath(r))
		}
		infos = append(infos, info)
	}
	return infos
}

func name(p string) string { return p[strings.IndexByte(p, '-')+1:] }

// drain runs the plan one path at a time, failing those in fail, and
// returns the order of starts and what each failure blocked.
func drain(t *testing.T, p *plan, fail ...string) (order []string, blocked map[string][]string) {
	t.Helper()
	blocked = map[string][]string{}
	for {
		i, ok := p.next()
		if !ok {
			return order, blocked
		}
		n := name(p.infos[i].Path)
		order = append(order, n)
		if slices.Contains(fail, n) {
			for _, d := range p.failed(i) {
				blocked[n] = append(blocked[n], name(p.infos[d].Path))
			}
		} else {
			p.succeeded(i)
		}
	}
}

// Every path starts after the paths it refers to, whatever order they come
// in; references outside the plan (the cache has them) and to the path
// itself do not hold anything up.
func TestPlanStartsPathsAfterTheirReferences(t *testing.T) {
	infos := graph("top: mid lib top", "mid: lib glibc", "lib: glibc outside", "glibc:", "side: glibc")
	p, err := newPlan(infos)
	if err != nil {
		t.Fatal(err)
	}
	order, _ := drain(t, p)
	if len(order) != 5 {
		t.Fatalf("started %v, want all 5", order)
	}
	at := map[string]int{}
	for i, n := range order {
		at[n] = i
	}
	for _, info := range infos {
		for _, r := range info.References {
			if r != info.Path && at[name(r)] >= at[name(info.Path)] && name(r) != "outside" {
				t.Errorf("%s started before its reference %s: %v", name(info.Path), name(r), order)
			}
		}
	}
	// The longest chain first: glibc (3 above it) before anything, and
	// lib before side, which nothing needs.
	if order[0] != "glibc" || at["lib"] > at["side"] {
		t.Errorf("order %v does not start the longest chain first", order)
	}
}

// Only what is ready is handed out: with nothing finished, the paths that
// wait for others are not offered.
func TestPlanHandsOutOnlyReadyPaths(t *testing.T) {
	p, err := newPlan(graph("a: b", "b: c", "c:", "d:"))
	if err != nil {
		t.Fatal(err)
	}
	var ready []string
	for {
		i, ok := p.next()
		if !ok {
			break
		}
		ready = append(ready, name(p.infos[i].Path))
	}
	slices.Sort(ready)
	if !slices.Equal(ready, []string{"c", "d"}) {
		t.Fatalf("ready before anything finished: %v, want [c d]", ready)
	}
}

// A failure blocks everything that refers to it, directly or not, and
// nothing else.
func TestPlanFailureBlocksDependentsOnly(t *testing.T) {
	p, err := newPlan(graph("app: lib tool", "lib: base", "tool: base2", "base:", "base2:", "other: base2", "lib2: lib"))
	if err != nil {
		t.Fatal(err)
	}
	order, blocked := drain(t, p, "base")
	slices.Sort(order)
	if want := []string{"base", "base2", "other", "tool"}; !slices.Equal(order, want) {
		t.Errorf("started %v, want %v", order, want)
	}
	slices.Sort(blocked["base"])
	if want := []string{"app", "lib", "lib2"}; !slices.Equal(blocked["base"], want) {
		t.Errorf("base's failure blocked %v, want %v", blocked["base"], want)
	}
}

// A path blocked by one failure is reported once, even when a second
// reference of it fails too.
func TestPlanBlocksOnce(t *testing.T) {
	p, err := newPlan(graph("app: x y", "x:", "y:"))
	if err != nil {
		t.Fatal(err)
	}
	_, blocked := drain(t, p, "x", "y")
	if n := len(blocked["x"]) + len(blocked["y"]); n != 1 {
		t.Errorf("app blocked %d times: %v", n, blocked)
	}
}

// A cycle is impossible in Nix, but a plan with one would wait for ever:
// it is refused before anything starts.
func TestPlanRefusesCycles(t *testing.T) {
	for _, g := range [][]string{
		{"a: b", "b: a"},
		{"a: b", "b: c", "c: a", "d:"},
	} {
		_, err := newPlan(graph(g...))
		if err == nil || !strings.Contains(err.Error(), "cycle") {
			t.Errorf("%v: %v, want a cycle refused", g, err)
		}
	}
	if _, err := newPlan(graph("a: a")); err != nil {
		t.Errorf("a path referring to itself: %v", err)
	}
}

func TestPlanRefusesDuplicates(t *testing.T) {
	if _, err := newPlan(graph("a:", "a:")); err == nil {
		t.Error("a path planned twice was accepted")
	}
}

// A long chain and many independent paths: each comes out exactly once.
func TestPlanLarge(t *testing.T) {
	var lines []string
	for i := range 2000 {
		l := fmt.Sprintf("c%d:", i)
		if i > 0 {
			l += fmt.Sprintf(" c%d", i-1)
		}
		lines = append(lines, l, fmt.Sprintf("w%d: c0", i))
	}
	p, err := newPlan(graph(lines...))
	if err != nil {
		t.Fatal(err)
	}
	order, _ := drain(t, p)
	if len(order) != 4000 {
		t.Fatalf("%d paths started, want 4000", len(order))
	}
	if order[0] != "c0" || order[1] != "c1" {
		t.Errorf("the chain does not go first: %v", order[:3])
	}
}
