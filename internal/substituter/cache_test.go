package substituter

import (
	"strings"
	"testing"
	"time"
)

// Answers live as long as Nix's own narinfo cache keeps them: a path found
// for narinfo-cache-positive-ttl, a missing one for
// narinfo-cache-negative-ttl, so that a path pushed after a miss is seen
// within the hour.
func TestNarinfoCacheTTLs(t *testing.T) {
	now := time.Unix(1e9, 0)
	c := newNarinfoCache(DefaultPositiveTTL, DefaultNegativeTTL, 1<<20)
	c.now = func() time.Time { return now }
	c.put("found", []byte("StorePath: x\n"))
	c.put("missing", nil)
	check := func(when string, hash string, wantOK, wantFound bool) {
		t.Helper()
		body, ok := c.get(hash)
		if ok != wantOK || (body != nil) != wantFound {
			t.Errorf("%s, %s: ok=%v found=%v, want ok=%v found=%v", when, hash, ok, body != nil, wantOK, wantFound)
		}
	}
	check("at once", "found", true, true)
	check("at once", "missing", true, false)
	check("at once", "never asked", false, false)
	now = now.Add(DefaultNegativeTTL - time.Second)
	check("just before the negative TTL", "missing", true, false)
	now = now.Add(time.Second)
	check("at the negative TTL", "missing", false, false)
	check("at the negative TTL", "found", true, true)
	now = now.Add(DefaultPositiveTTL)
	check("past the positive TTL", "found", false, false)
}

// A TTL of 0 keeps nothing, as Nix's settings of 0 do.
func TestNarinfoCacheZeroTTL(t *testing.T) {
	c := newNarinfoCache(DefaultPositiveTTL, 0, 1<<20)
	c.put("missing", nil)
	if _, ok := c.get("missing"); ok {
		t.Error("a 404 was kept with a negative TTL of 0")
	}
}

// The memory answers take is bounded; the least recently used go first.
func TestNarinfoCacheBound(t *testing.T) {
	body := []byte(strings.Repeat("x", 1000))
	c := newNarinfoCache(DefaultPositiveTTL, DefaultNegativeTTL, 10*(1000+entryOverhead+32))
	for i := range 10 {
		c.put(storeHash(i), body)
	}
	c.get(storeHash(0)) // used: kept over 1
	c.put(storeHash(10), body)
	if _, ok := c.get(storeHash(1)); ok {
		t.Error("the least recently used answer was kept past the bound")
	}
	if _, ok := c.get(storeHash(0)); !ok {
		t.Error("a recently used answer was dropped")
	}
	if c.bytes > c.maxBytes {
		t.Errorf("%d bytes held, bound %d", c.bytes, c.maxBytes)
	}
	c.put("huge", make([]byte, c.maxBytes))
	if _, ok := c.get("huge"); ok || c.bytes > c.maxBytes {
		t.Error("an answer larger than the bound was kept")
	}
}
