package substituter

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A server presenting any key but the pinned one gets nothing: not at the
// first connection, which fails for good, and not later.
func TestWrongHostKeyIsRefused(t *testing.T) {
	signer := newSigner(t)
	cache := newCacheServer(t, signer.PublicKey())
	impostor := newSigner(t).PublicKey()
	up, err := NewUpstream(UpstreamConfig{Target: cache.target(), Signer: signer, KnownHosts: pinFile(t, cache, impostor), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	err = up.Connect(context.Background())
	var hk *HostKeyError
	if !errors.As(err, &hk) || !hk.Mismatch || !Fatal(err) {
		t.Fatalf("Connect with the wrong key pinned: %v, want a host key mismatch", err)
	}
	if up.Up() {
		t.Fatal("connected anyway")
	}
	if cache.logins != 0 {
		t.Fatalf("logged in %d times to a server with the wrong key", cache.logins)
	}
}

// Nothing pinned is refused before any connection: never trust on first
// use.
func TestNoPinnedKeyIsRefused(t *testing.T) {
	signer := newSigner(t)
	cache := newCacheServer(t, signer.PublicKey())
	for name, content := range map[string]string{
		"missing file": "",
		"other host":   "[127.0.0.1]:1 " + cache.hostKey.PublicKey().Type() + " AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl\n",
	} {
		known := filepath.Join(t.TempDir(), "known_hosts")
		if content != "" {
			if err := os.WriteFile(known, []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		_, err := NewUpstream(UpstreamConfig{Target: cache.target(), Signer: signer, KnownHosts: known, Logf: t.Logf})
		var hk *HostKeyError
		if !errors.As(err, &hk) || hk.Mismatch {
			t.Errorf("%s: %v, want no pinned key", name, err)
		}
	}
}

func TestRefusedKeyIsFatal(t *testing.T) {
	cache := newCacheServer(t, newSigner(t).PublicKey())
	up, err := NewUpstream(UpstreamConfig{Target: cache.target(), Signer: newSigner(t), KnownHosts: pinFile(t, cache, cache.hostKey.PublicKey()), Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	err = up.Connect(context.Background())
	var auth *AuthError
	if !errors.As(err, &auth) || !Fatal(err) {
		t.Fatalf("Connect with a key the cache does not know: %v, want an AuthError", err)
	}
}

// An unreachable cache at start is not fatal: the substituter answers at
// once and connects when the cache comes up.
func TestUnreachableAtStartConnectsLater(t *testing.T) {
	signer := newSigner(t)
	cache := newCacheServer(t, signer.PublicKey())
	cache.stop()
	l := &logs{}
	up, err := NewUpstream(UpstreamConfig{Target: cache.target(), Signer: signer, KnownHosts: pinFile(t, cache, cache.hostKey.PublicKey()), Logf: l.logf})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	start := time.Now()
	if err := up.Connect(ctx); err != nil {
		t.Fatalf("Connect to a cache that is down: %v, want nil (retried in the background)", err)
	}
	if d := time.Since(start); d > connectTimeout {
		t.Errorf("Connect took %s", d)
	}
	go up.Run(ctx)
	cache.restart()
	waitFor(t, "the connection", up.Up)
}
