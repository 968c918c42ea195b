package substituter

import (
	"container/list"
	"sync"
	"time"
)

// Nix's defaults for narinfo-cache-positive-ttl and
// narinfo-cache-negative-ttl: a path, once in the cache, stays (paths are
// immutable); a path missing now may be pushed within the hour.
const (
	DefaultPositiveTTL = 30 * 24 * time.Hour
	DefaultNegativeTTL = time.Hour
)

// entryOverhead is what an entry costs besides its narinfo, roughly: the
// list element, the map slot and the key.
const entryOverhead = 128

// narinfoCache keeps the cache's answers to narinfo requests, positive and
// negative, for their TTLs, within a bound on the memory they take: the
// least recently used answers go first.
type narinfoCache struct {
	positiveTTL, negativeTTL time.Duration
	maxBytes                 int
	now                      func() time.Time

	mu      sync.Mutex
	entries map[string]*list.Element // of *cachedNarinfo, by hash part
	order   *list.List               // most recently used first
	bytes   int
}

type cachedNarinfo struct {
	hash string
	// body is the narinfo; nil when the cache answered 404.
	body    []byte
	expires time.Time
}

func newNarinfoCache(positiveTTL, negativeTTL time.Duration, maxBytes int) *narinfoCache {
	return &narinfoCache{
		positiveTTL: positiveTTL, negativeTTL: negativeTTL, maxBytes: maxBytes, now: time.Now,
		entries: map[string]*list.Element{}, order: list.New(),
	}
}

// get returns the cached answer for hash: ok is false when there is none
// (or it expired); body is nil for a cached 404.
func (c *narinfoCache) get(hash string) (body []byte, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	el, ok := c.entries[hash]
	if !ok {
		return nil, false
	}
	e := el.Value.(*cachedNarinfo)
	if !c.now().Before(e.expires) {
		c.remove(el)
		return nil, false
	}
	c.order.MoveToFront(el)
	return e.body, true
}

// put records the cache's answer for hash: body, or nil for a 404.
func (c *narinfoCache) put(hash string, body []byte) {
	ttl := c.positiveTTL
	if body == nil {
		ttl = c.negativeTTL
	}
	if ttl <= 0 {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[hash]; ok {
		c.remove(el)
	}
	e := &cachedNarinfo{hash: hash, body: body, expires: c.now().Add(ttl)}
	if size(e) > c.maxBytes {
		return
	}
	c.entries[hash] = c.order.PushFront(e)
	c.bytes += size(e)
	for c.bytes > c.maxBytes {
		c.remove(c.order.Back())
	}
}

// forget drops the answer for hash: the path was just uploaded, so a
// remembered 404 is wrong now.
func (c *narinfoCache) forget(hash string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if el, ok := c.entries[hash]; ok {
		c.remove(el)
	}
}

func (c *narinfoCache) remove(el *list.Element) {
	e := c.order.Remove(el).(*cachedNarinfo)
	delete(c.entries, e.hash)
	c.bytes -= size(e)
}

func size(e *cachedNarinfo) int { return len(e.body) + len(e.hash) + entryOverhead }
