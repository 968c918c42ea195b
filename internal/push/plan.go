package push

import (
	"container/heap"
	"fmt"
	"slices"
	"strings"

	"github.com/nixcache/nixcache/internal/daemon"
)

// plan orders the uploads of one run. The cache imports a path only when
// every reference of it is valid there, so a path may start once each of
// its references that this run uploads has succeeded; references the cache
// has already are no concern of the plan. A failed path takes every path
// that refers to it, directly or not, down with it; the others go on.
//
// A plan is used by one goroutine, the runner's coordinator.
type plan struct {
	infos []*daemon.PathInfo
	// deps[i]: how many references of infos[i] in the plan have not yet
	// succeeded; dependents[i]: the paths in the plan that refer to infos[i].
	deps       []int
	dependents [][]int
	// rank[i] is the length of the longest chain of dependents above
	// infos[i]: starting the paths with the longest chains first keeps the
	// workers busy on a closure that is deep in places and wide in others.
	rank  []int
	ready readyQueue
	// blockedBy[i] is the path whose failure means infos[i] will not be
	// pushed, or -1.
	blockedBy []int
}

// newPlan plans the uploads of infos. It refuses a plan whose references
// form a cycle (a path referring to itself is no cycle): Nix's stores never
// hold one, and a cycle would leave its paths waiting for ever.
func newPlan(infos []*daemon.PathInfo) (*plan, error) {
	n := len(infos)
	p := &plan{
		infos:      infos,
		deps:       make([]int, n),
		dependents: make([][]int, n),
		rank:       make([]int, n),
		blockedBy:  make([]int, n),
	}
	index := make(map[string]int, n)
	for i, info := range infos {
		if _, dup := index[info.Path]; dup {
			return nil, fmt.Errorf("%s is planned twice", info.Path)
		}
		index[info.Path] = i
	}
	for i, info := range infos {
		p.blockedBy[i] = -1
		for _, ref := range uniq(info.References) {
			if j, ok := index[ref]; ok && j != i {
				p.deps[i]++
				p.dependents[j] = append(p.dependents[j], i)
			}
		}
	}
	order, err := p.topological()
	if err != nil {
		return nil, err
	}
	// Dependents come after what they refer to: rank them first.
	for _, i := range slices.Backward(order) {
		for _, d := range p.dependents[i] {
			p.rank[i] = max(p.rank[i], p.rank[d]+1)
		}
	}
	p.ready = readyQueue{plan: p}
	for i := range infos {
		if p.deps[i] == 0 {
			heap.Push(&p.ready, i)
		}
	}
	return p, nil
}

// topological orders the plan so that every path comes after the paths in
// the plan it refers to (Kahn's algorithm), or names a path on a cycle.
func (p *plan) topological() ([]int, error) {
	left := slices.Clone(p.deps)
	var order, queue []int
	for i, d := range left {
		if d == 0 {
			queue = append(queue, i)
		}
	}
	for len(queue) > 0 {
		i := queue[0]
		queue = queue[1:]
		order = append(order, i)
		for _, d := range p.dependents[i] {
			if left[d]--; left[d] == 0 {
				queue = append(queue, d)
			}
		}
	}
	if len(order) < len(p.infos) {
		var cycle []string
		for i, d := range left {
			if d > 0 {
				cycle = append(cycle, p.infos[i].Path)
			}
		}
		slices.Sort(cycle)
		return nil, fmt.Errorf("the references of %d paths form a cycle, which no Nix store holds (%s)", len(cycle), strings.Join(cycle[:min(3, len(cycle))], ", "))
	}
	return order, nil
}

// next returns a path whose references have all succeeded, the one with the
// longest chain of dependents first, or false when none is ready now.
func (p *plan) next() (int, bool) {
	if p.ready.Len() == 0 {
		return 0, false
	}
	return heap.Pop(&p.ready).(int), true
}

// succeeded records that infos[i] is in the cache: its dependents may be
// ready now.
func (p *plan) succeeded(i int) {
	for _, d := range p.dependents[i] {
		if p.deps[d]--; p.deps[d] == 0 && p.blockedBy[d] < 0 {
			heap.Push(&p.ready, d)
		}
	}
}

// failed records that infos[i] will not be in the cache and returns the
// paths that now cannot be pushed either: every path that refers to it,
// directly or through others. None of them was started, since each waits
// for infos[i].
func (p *plan) failed(i int) []int {
	var blocked []int
	stack := slices.Clone(p.dependents[i])
	for len(stack) > 0 {
		d := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if p.blockedBy[d] >= 0 {
			continue
		}
		p.blockedBy[d] = i
		blocked = append(blocked, d)
		stack = append(stack, p.dependents[d]...)
	}
	slices.Sort(blocked)
	return blocked
}

// readyQueue is a heap of the paths ready to start: longest chain of
// dependents first, then the larger NAR (it takes longest), then by path so
// that the order is the same every time.
type readyQueue struct {
	plan *plan
	ids  []int
}

func (q readyQueue) Len() int { return len(q.ids) }
func (q readyQueue) Less(a, b int) bool {
	i, j := q.ids[a], q.ids[b]
	p := q.plan
	if p.rank[i] != p.rank[j] {
		return p.rank[i] > p.rank[j]
	}
	if p.infos[i].NarSize != p.infos[j].NarSize {
		return p.infos[i].NarSize > p.infos[j].NarSize
	}
	return p.infos[i].Path < p.infos[j].Path
}
func (q readyQueue) Swap(a, b int) { q.ids[a], q.ids[b] = q.ids[b], q.ids[a] }
func (q *readyQueue) Push(x any)   { q.ids = append(q.ids, x.(int)) }
func (q *readyQueue) Pop() any {
	last := q.ids[len(q.ids)-1]
	q.ids = q.ids[:len(q.ids)-1]
	return last
}

// uniq returns the distinct strings of ss, sorted.
func uniq(ss []string) []string {
	ss = slices.Clone(ss)
	slices.Sort(ss)
	return slices.Compact(ss)
}
