package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nixcache/nixcache/tests/bench/benchkit"
	"github.com/nixcache/nixcache/tests/bench/substitute/linkproxy"
	"github.com/nixcache/nixcache/tests/harness"
)

// staticCache copies the closure from the server's store into a plain
// binary cache under work (uncompressed, as the SSH stores send it) and
// serves it with net/http's FileServer on loopback, behind a proxy of its
// own that plays the link. Clients reach the returned proxy; stop ends
// both.
func staticCache(env *harness.Env, work string, cl benchkit.Closure, link linkproxy.Link) (px *linkproxy.Proxy, stop func(), err error) {
	dir := filepath.Join(work, "binary-cache")
	start := time.Now()
	r := benchkit.RunLong(env.Environ(), 10*time.Minute, "nix", "--extra-experimental-features", "nix-command",
		"copy", "--to", "file://"+dir+"?compression=none", cl.Top)
	if r.Err != nil {
		return nil, nil, r.Err
	}
	fmt.Fprintf(os.Stderr, "static binary cache in %s ready in %.1fs\n", dir, time.Since(start).Seconds())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	srv := &http.Server{Handler: http.FileServer(http.Dir(dir)), ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	if px, err = linkproxy.Start(ln.Addr().String(), link); err != nil {
		srv.Close()
		return nil, nil, err
	}
	return px, func() { px.Close(); srv.Close() }, nil
}

// register adds a client to the registry `nixcache serve` reads and
// installs the registry's authorized_keys, as the cache's admin would.
func register(env *harness.Env, nixcache string, s *harness.Server, name, publicKey string) error {
	if r := harness.Run(env.Environ(), nixcache, "clients", "add", "--registry", s.Registry(), "--key", publicKey, name); r.Err != nil {
		return r.Err
	}
	r := harness.Run(env.Environ(), nixcache, "clients", "authorized-keys", "--registry", s.Registry())
	if r.Err != nil {
		return r.Err
	}
	return s.Authorize(strings.Split(strings.TrimSuffix(r.Stdout, "\n"), "\n")...)
}
