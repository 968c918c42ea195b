// Command upload times uploading a large closure to a cache through a
// simulated WAN link (tests/bench/substitute/linkproxy: -rtt added,
// -bandwidth per direction, shared by all connections): the seed's way
// (`nix-copy-closure --to root@cache`, root over ssh, then `nix store sign
// --all` on the server over ssh, each part timed), `nixcache push
// --recursive` and `nix copy --to http://127.0.0.1:PORT` through the
// client's `nixcache client substituter`, against the link limit (bytes ÷
// bandwidth + 1 RTT).
//
// The closure is the download benchmark's (tests/bench/substitute), built
// once into the machine's store through the harness's daemon: that store
// is the client's, the source of every upload. Each run uploads into a
// fresh cache (a chroot store with a nix-daemon of its own, and sshd in
// front of it), so every path travels and is imported; afterwards the
// cache's store is checked (every path of the closure valid and signed by
// the cache's key, which is not the key the source paths carry) and
// deleted. Configurations alternate run by run.
//
// Run as root on a machine with Nix: go run ./tests/bench/upload
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/nixcache/nixcache/tests/bench/benchkit"
	"github.com/nixcache/nixcache/tests/bench/stats"
	"github.com/nixcache/nixcache/tests/bench/substitute/linkproxy"
	"github.com/nixcache/nixcache/tests/harness"
)

type options struct {
	paths, mb, runs      int
	rtt                  time.Duration
	mbit                 float64
	content, state, only string
	timeout              time.Duration
}

func main() {
	var o options
	flag.IntVar(&o.paths, "paths", 500, "store paths in the closure (at least 2)")
	flag.IntVar(&o.mb, "mb", 200, "total size of the closure's data, MB (10^6 bytes)")
	flag.DurationVar(&o.rtt, "rtt", 40*time.Millisecond, "round-trip time the link adds")
	flag.Float64Var(&o.mbit, "bandwidth", 200, "link bandwidth per direction, Mbit/s (10^6 bits/s), shared by all connections")
	flag.IntVar(&o.runs, "runs", 3, "timed runs of each configuration")
	flag.StringVar(&o.content, "content", "random", `closure data: "random" (incompressible) or "mixed" (half zeros)`)
	flag.StringVar(&o.state, "state", "/var/tmp/nixcache-bench-substitute", "directory for the closure's GC root, the keys and the caches' stores (the download benchmark's, to share its closure)")
	flag.StringVar(&o.only, "only", "", "comma-separated configuration ids to run (default all)")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "bound on any single upload")
	flag.Parse()
	if o.paths < 2 || o.mb < 1 || o.runs < 1 || o.mbit <= 0 || (o.content != "random" && o.content != "mixed") {
		fmt.Fprintln(os.Stderr, "upload: bad flags")
		flag.Usage()
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "upload:", err)
		os.Exit(1)
	}
}

// config is one way of uploading.
type config struct {
	id       string
	kind     cacheKind
	describe string
	// command is the timed upload, run on the client; {top}, {sub} (the
	// substituter's URL) are filled in. Empty for the seed.
	command []string
}

func configs() []config {
	return []config{
		{id: "seed", kind: rootShell, describe: "seed: `nix-copy-closure --to root@cache`, then `nix store sign --all` over ssh"},
		{id: "push", kind: nixcacheServe, describe: "`nixcache push --recursive` (client substituter), defaults (8 jobs)",
			command: []string{"{nixcache}", "push", "--to", "{sub}", "--recursive", "{top}"}},
		{id: "push-32", kind: nixcacheServe, describe: "`nixcache push --recursive --jobs 32` (client substituter)",
			command: []string{"{nixcache}", "push", "--to", "{sub}", "--recursive", "--jobs", "32", "{top}"}},
		{id: "copy", kind: nixcacheServe, describe: "`nix copy --to http://127.0.0.1:PORT?compression=none` (client substituter)",
			command: []string{"nix", "--extra-experimental-features", "nix-command", "copy", "--to", "{sub}?compression=none", "{top}"}},
		{id: "copy-zstd", kind: nixcacheServe, describe: "`nix copy --to http://127.0.0.1:PORT?compression=zstd` (client substituter)",
			command: []string{"nix", "--extra-experimental-features", "nix-command", "copy", "--to", "{sub}?compression=zstd", "{top}"}},
	}
}

type result struct {
	times, copies, signs []time.Duration
	up                   []int64
	conns                []int64
}

func run(o options) error {
	// The closure's paths carry the download benchmark's signature; the
	// cache signs with a key of its own, so a signature by it on the
	// cache proves the upload's signing step ran.
	setup, err := benchkit.Start(o.state, o.paths, o.mb, o.content)
	if err != nil {
		return err
	}
	env, nixcache, cl := setup.Env, setup.Nixcache, setup.Closure
	defer env.Close()
	cacheSecret, cachePublic, err := benchkit.NamedKey(env, filepath.Join(o.state, "upload-cache-secret-key"), "nixcache-bench-upload-cache-1", nixcache)
	if err != nil {
		return err
	}
	version, sshVersion := setup.Nix, setup.SSH
	bandwidth := o.mbit * 1e6 / 8
	link := linkproxy.Link{RTT: o.rtt, Bandwidth: bandwidth}

	all := configs()
	if o.only != "" {
		want := strings.Split(o.only, ",")
		all = slices.DeleteFunc(all, func(c config) bool { return !slices.Contains(want, c.id) })
	}
	work, err := os.MkdirTemp(o.state, "upload-")
	if err != nil {
		return err
	}
	defer benchkit.RemoveAll(work)

	linkLimit := time.Duration(float64(cl.NarBytes)/bandwidth*float64(time.Second)) + o.rtt
	load, _ := os.ReadFile("/proc/loadavg")
	fmt.Printf("%s; %s; %d CPUs; load %s; closure %d paths, %s MB NAR (%s); link %.0f Mbit/s, RTT %v; link limit %.2fs\n",
		version, sshVersion, runtime.NumCPU(), strings.Join(strings.Fields(string(load))[:3], " "), cl.Paths, benchkit.MB(cl.NarBytes), o.content, o.mbit, o.rtt, linkLimit.Seconds())

	results := make([]result, len(all))
	for r := range o.runs {
		for i, c := range all {
			res := &results[i]
			u, err := upload(env, work, nixcache, c, cl, cacheSecret, cachePublic, link, o)
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", c.id, r+1, err)
			}
			res.times = append(res.times, u.total)
			res.copies = append(res.copies, u.copy)
			res.signs = append(res.signs, u.sign)
			res.up = append(res.up, u.up)
			res.conns = append(res.conns, u.conns)
			extra := ""
			if c.kind == rootShell {
				extra = fmt.Sprintf(" (copy %.2fs + sign %.2fs)", u.copy.Seconds(), u.sign.Seconds())
			}
			fmt.Printf("%-10s run %d: %7.2fs%s  %s MB up, %s MB down, %d TCP connections\n", c.id, r+1, u.total.Seconds(), extra, benchkit.MB(u.up), benchkit.MB(u.down), u.conns)
		}
	}

	seed := -1.0
	for i, c := range all {
		if c.id == "seed" {
			seed = stats.Median(stats.Seconds(results[i].times))
		}
	}
	fmt.Printf("\n| configuration | runs | median | min–max | seed ÷ this | this ÷ link limit | MB up the link | TCP conns |\n|---|---|---|---|---|---|---|---|\n")
	row := func(describe string, ts []time.Duration, up string, conns string) {
		m := stats.Median(stats.Seconds(ts))
		fmt.Printf("| %s | %d | %.2f s | %.2f–%.2f | %s | %.2f | %s | %s |\n", describe, len(ts), m,
			slices.Min(ts).Seconds(), slices.Max(ts).Seconds(), ratio(seed, m), m/linkLimit.Seconds(), up, conns)
	}
	for i, c := range all {
		res := results[i]
		up, conns := benchkit.MB(res.up[len(res.up)/2]), fmt.Sprint(res.conns[0])
		if c.kind == rootShell {
			row("seed, its copy: `nix-copy-closure --to root@cache`", res.copies, up, "1")
			row("seed, its signing: `ssh root@cache nix store sign --all`", res.signs, "—", "1")
		}
		row(c.describe, res.times, up, conns)
	}
	fmt.Printf("| link limit: %s MB ÷ %.0f Mbit/s + 1 RTT | — | %.2f s | — | %s | 1.00 | — | — |\n",
		benchkit.MB(cl.NarBytes), o.mbit, linkLimit.Seconds(), ratio(seed, linkLimit.Seconds()))
	load, _ = os.ReadFile("/proc/loadavg")
	fmt.Printf("\nload at the end: %s\n", strings.Join(strings.Fields(string(load))[:3], " "))
	return nil
}

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

type uploaded struct {
	total, copy, sign time.Duration
	up, down, conns   int64
}

// upload runs one upload of the closure into a fresh cache, checks the
// cache's store, and removes it.
func upload(env *harness.Env, work, nixcache string, c config, cl benchkit.Closure, cacheSecret, cachePublic string, link linkproxy.Link, o options) (u uploaded, err error) {
	srv, err := startCache(env, nixcache, work, c.kind, cacheSecret, cachePublic)
	if err != nil {
		return u, err
	}
	defer srv.Close()
	px, err := linkproxy.Start(srv.Addr(), link)
	if err != nil {
		return u, err
	}
	defer px.Close()
	dir, err := os.MkdirTemp(work, c.id+"-client-")
	if err != nil {
		return u, err
	}
	defer benchkit.RemoveAll(dir)
	cl2, err := newClient(env, dir, srv, px.Port())
	if err != nil {
		return u, err
	}
	var up0, down0, conns0 int64
	mark := func() {
		up0, down0 = px.Bytes()
		conns0 = px.Connections()
	}
	clientEnv := append(env.Environ(), "NIX_SSHOPTS=-F "+cl2.sshConfig)
	switch c.kind {
	case rootShell:
		if err := srv.Authorize(cl2.publicKey); err != nil {
			return u, err
		}
		mark()
		_, u.copy, _, err = benchkit.Timed(clientEnv, o.timeout, 0, "nix-copy-closure", "--to", "root@"+cacheAlias, cl.Top)
		if err != nil {
			return u, err
		}
		// The key file is on the server (here: the same file system).
		_, u.sign, _, err = benchkit.Timed(clientEnv, o.timeout, 0, "ssh", "-F", cl2.sshConfig, cacheAlias,
			"nix", "store", "sign", "--all", "--key-file", cacheSecret)
		if err != nil {
			return u, err
		}
		u.total = u.copy + u.sign
	case nixcacheServe:
		if err := registerPush(env, nixcache, srv, "bench-"+filepath.Base(dir), cl2.publicKey); err != nil {
			return u, err
		}
		mark()
		sub, err := benchkit.StartSubstituter(env, nixcache, benchkit.SubstituterOptions{
			Dir: dir, Cache: fmt.Sprintf("ssh://root@127.0.0.1:%d", px.Port()), Port: px.Port(),
			Identity: cl2.key, HostKey: srv.HostKey, Timeout: o.timeout,
		})
		if err != nil {
			return u, err
		}
		defer sub.Stop()
		args := make([]string, len(c.command))
		for i, a := range c.command {
			args[i] = strings.NewReplacer("{top}", cl.Top, "{sub}", sub.URL, "{nixcache}", nixcache).Replace(a)
		}
		_, u.total, _, err = benchkit.Timed(clientEnv, o.timeout, 0, args[0], args[1:]...)
		if err != nil {
			return u, fmt.Errorf("%w\nsubstituter's log:\n%s", err, benchkit.Tail(sub.Log()))
		}
		u.copy = u.total
	}
	up1, down1 := px.Bytes()
	u.up, u.down, u.conns = up1-up0, down1-down0, px.Connections()-conns0
	return u, srv.check(cl, cachePublic)
}

// check proves the upload: every path of the closure is valid in the
// cache's store and signed by the cache's key.
func (c *cache) check(cl benchkit.Closure, cachePublic string) error {
	r := harness.Run(c.Environ(), "nix", "path-info", "--json", "--recursive", cl.Top)
	if r.Err != nil {
		return fmt.Errorf("the cache's store: %w", r.Err)
	}
	var infos []struct {
		Path       string   `json:"path"`
		Valid      *bool    `json:"valid"`
		Signatures []string `json:"signatures"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &infos); err != nil {
		return fmt.Errorf("nix path-info --json: %v", err)
	}
	if len(infos) != cl.Paths {
		return fmt.Errorf("the cache has %d paths of the closure, want %d", len(infos), cl.Paths)
	}
	keyName, _, _ := strings.Cut(cachePublic, ":")
	for _, i := range infos {
		if i.Valid != nil && !*i.Valid {
			return fmt.Errorf("%s is not valid on the cache", i.Path)
		}
		if !slices.ContainsFunc(i.Signatures, func(s string) bool { return strings.HasPrefix(s, keyName+":") }) {
			return fmt.Errorf("%s is not signed by the cache's key %s (signatures: %v)", i.Path, keyName, i.Signatures)
		}
	}
	return nil
}
