// Command substitute times substitution of a large closure from the SSH
// cache through a simulated WAN link (a loopback TCP proxy adding -rtt and
// limiting -bandwidth, shared by all connections), for the seed's setup
// (ssh://, Nix's defaults), ssh-ng://, and each of Nix's knobs alone and
// combined, against the link limit (bytes ÷ bandwidth + 1 RTT), a plain
// static HTTP binary cache behind the same link, and nixcache's own
// channel (`nixcache client substituter` over one SSH connection to
// `nixcache serve`).
//
// Every run substitutes the top path into a fresh chroot client store with
// `nix-store --store DIR --realise TOP`, which opens that store in-process:
// the substitution (queries, ssh connections, NAR transfers) runs in that
// nix-store process, under the client's nix.conf. Its wall clock is timed.
// The HTTP configurations' servers (the static file server, the client's
// substituter with its SSH connection made) are up before the clock starts,
// as a binary cache or a substituter service would be.
//
// The closure is built once into the machine's store through the harness's
// daemon, rooted under -state, and signed by `nixcache sign` with a key
// kept there; later runs with the same -paths, -mb and -content reuse it.
//
// Runs of max-connections > 1 are bounded: Nix from 2.4 to 2.31 deadlocks
// in SSHMaster::startMaster (NixOS/nix#13902), so such a run that starts no
// ssh process within -hang-after is reported as hung and its process group
// killed.
//
// Run as root on a machine with Nix: go run ./tests/bench/substitute
package main

import (
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
	paths, mb, runs, jobs int
	rtt                   time.Duration
	mbit                  float64
	content, state, only  string
	hangAfter, timeout    time.Duration
}

func main() {
	var o options
	flag.IntVar(&o.paths, "paths", 500, "store paths in the closure (at least 2)")
	flag.IntVar(&o.mb, "mb", 200, "total size of the closure's data, MB (10^6 bytes)")
	flag.DurationVar(&o.rtt, "rtt", 40*time.Millisecond, "round-trip time the link adds")
	flag.Float64Var(&o.mbit, "bandwidth", 200, "link bandwidth per direction, Mbit/s (10^6 bits/s), shared by all connections")
	flag.IntVar(&o.runs, "runs", 2, "timed runs of each configuration that completes (hanging ones run once)")
	flag.IntVar(&o.jobs, "jobs", 8, "N for max-jobs and max-connections in the configurations that set them")
	flag.StringVar(&o.content, "content", "random", `closure data: "random" (incompressible) or "mixed" (half zeros)`)
	flag.StringVar(&o.state, "state", "/var/tmp/nixcache-bench-substitute", "directory for the closure's GC root, the signing key and client stores")
	flag.StringVar(&o.only, "only", "", "comma-separated configuration ids to run (default all)")
	flag.DurationVar(&o.hangAfter, "hang-after", 15*time.Second, "a run that may deadlock and has started no ssh process by then is reported as hung")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "bound on any single substitution")
	flag.Parse()
	if o.paths < 2 || o.mb < 1 || o.runs < 1 || o.jobs < 1 || o.mbit <= 0 || (o.content != "random" && o.content != "mixed") {
		fmt.Fprintln(os.Stderr, "substitute: bad flags")
		flag.Usage()
		os.Exit(2)
	}
	if err := run(o); err != nil {
		fmt.Fprintln(os.Stderr, "substitute:", err)
		os.Exit(1)
	}
}

// via is how a client reaches the cache.
type via int

const (
	// viaSSH: Nix's own ssh:// or ssh-ng:// store.
	viaSSH via = iota
	// viaStatic: a static HTTP binary cache, the files `nix copy --to
	// file://` wrote, served by net/http's FileServer.
	viaStatic
	// viaChannel: `nixcache client substituter` on loopback, which Nix
	// reaches over HTTP, over one SSH connection to `nixcache serve`.
	viaChannel
)

// config is one way of setting up the client.
type config struct {
	id      string
	via     via
	proto   harness.Protocol
	params  string // the substituter URL's query
	conf    string // extra nix.conf lines
	ssh     string // extra ssh_config lines ({dir} is the client's directory)
	direct  bool   // straight to sshd, no proxy: the machine's own floor
	mayHang bool   // max-connections > 1: Nix's own SSH master
	// join: `nixcache client join` writes the client's nix.conf and ssh
	// configuration, exactly as on a real client.
	join     bool
	describe string
}

func configs(jobs int) []config {
	j := fmt.Sprint(jobs)
	return []config{
		{id: "floor", proto: harness.SSH, direct: true, describe: "ssh://, defaults, no proxy (loopback floor)"},
		{id: "seed", proto: harness.SSH, describe: "seed: ssh://, Nix defaults"},
		{id: "ng", proto: harness.SSHNG, describe: "ssh-ng://, defaults"},
		{id: "join", proto: harness.SSHNG, join: true, describe: "what `nixcache client join` writes (ssh-ng://)"},
		{id: "compress", proto: harness.SSH, params: "compress=true", describe: "ssh://?compress=true"},
		{id: "jobs", proto: harness.SSH, conf: "max-jobs = " + j, describe: "ssh://, max-jobs = " + j},
		{id: "ng-jobs", proto: harness.SSHNG, conf: "max-jobs = " + j, describe: "ssh-ng://, max-jobs = " + j},
		{id: "conns", proto: harness.SSH, params: "max-connections=" + j, mayHang: true, describe: "ssh://?max-connections=" + j},
		{id: "ng-conns", proto: harness.SSHNG, params: "max-connections=" + j, mayHang: true, describe: "ssh-ng://?max-connections=" + j},
		{id: "conns-cm", proto: harness.SSH, params: "max-connections=" + j, mayHang: true,
			ssh:      "  ControlMaster auto\n  ControlPath {dir}/cm-%C\n  ControlPersist 30\n",
			describe: "ssh://?max-connections=" + j + " + ControlMaster in ssh_config"},
		{id: "all", proto: harness.SSHNG, params: "max-connections=" + j + "&compress=true", conf: "max-jobs = " + j, mayHang: true,
			describe: "ssh-ng://?max-connections=" + j + "&compress=true, max-jobs = " + j},
		{id: "http", via: viaStatic, describe: "static HTTP binary cache (file://, compression=none), defaults"},
		{id: "http-jobs", via: viaStatic, conf: "max-jobs = " + j, describe: "static HTTP binary cache, max-jobs = " + j},
		{id: "channel", via: viaChannel, proto: harness.Nixcache, describe: "nixcache channel (client substituter), defaults"},
		{id: "channel-jobs", via: viaChannel, proto: harness.Nixcache, conf: "max-jobs = " + j, describe: "nixcache channel (client substituter), max-jobs = " + j},
	}
}

type result struct {
	times      []time.Duration
	down, up   []int64
	conns      []int64
	hung       string
	runsWanted int
}

func run(o options) error {
	setup, err := benchkit.Start(o.state, o.paths, o.mb, o.content)
	if err != nil {
		return err
	}
	// nixcache is the one the Nixcache protocol's sshd runs, too.
	env, nixcache, public, cl := setup.Env, setup.Nixcache, setup.Public, setup.Closure
	defer env.Close()
	version, ssh := setup.Nix, setup.SSH
	bandwidth := o.mbit * 1e6 / 8 // bytes/s
	link := linkproxy.Link{RTT: o.rtt, Bandwidth: bandwidth}

	all := configs(o.jobs)
	if o.only != "" {
		want := strings.Split(o.only, ",")
		all = slices.DeleteFunc(all, func(c config) bool { return !slices.Contains(want, c.id) })
	}
	protocols := []harness.Protocol{harness.SSH, harness.SSHNG}
	wantStatic := false
	for _, c := range all {
		wantStatic = wantStatic || c.via == viaStatic
		if c.via == viaChannel && !slices.Contains(protocols, c.proto) {
			protocols = append(protocols, c.proto)
		}
	}

	work, err := os.MkdirTemp(o.state, "clients-")
	if err != nil {
		return err
	}
	defer benchkit.RemoveAll(work)

	servers := map[harness.Protocol]*harness.Server{}
	proxies := map[harness.Protocol]*linkproxy.Proxy{}
	for _, p := range protocols {
		s, err := env.StartServer(p)
		if err != nil {
			return err
		}
		defer s.Close()
		servers[p] = s
		px, err := linkproxy.Start(s.Addr(), link)
		if err != nil {
			return err
		}
		defer px.Close()
		proxies[p] = px
	}
	var static *linkproxy.Proxy
	if wantStatic {
		var stop func()
		if static, stop, err = staticCache(env, work, cl, link); err != nil {
			return err
		}
		defer stop()
	}
	linkLimit := time.Duration(float64(cl.NarBytes)/bandwidth*float64(time.Second)) + o.rtt
	fmt.Printf("%s; %s; %d CPUs; closure %d paths, %s MB NAR (%s); link %.0f Mbit/s, RTT %v; link limit %.2fs\n",
		version, ssh, runtime.NumCPU(), cl.Paths, benchkit.MB(cl.NarBytes), o.content, o.mbit, o.rtt, linkLimit.Seconds())
	fmt.Printf("max-substitution-jobs on this Nix: %s\n", knowsSetting(env, "max-substitution-jobs"))

	results := make([]result, len(all))
	// Round-robin over the configurations, so that drift (page cache,
	// other load) spreads over all of them.
	for r := range o.runs {
		for i, c := range all {
			res := &results[i]
			if res.hung != "" {
				continue
			}
			var s *harness.Server
			var px *linkproxy.Proxy
			var port int
			switch {
			case c.via == viaStatic:
				px, port = static, static.Port()
			case c.direct:
				s = servers[c.proto]
				port = s.Port
			default:
				s, px = servers[c.proto], proxies[c.proto]
				port = px.Port()
			}
			d, bytesUp, bytesDown, conns, hung, err := substitute(env, work, s, port, px, c, cl, public, nixcache, o)
			if err != nil {
				return fmt.Errorf("%s, run %d: %w", c.id, r+1, err)
			}
			if hung != "" {
				res.hung = hung
				fmt.Printf("%-12s run %d: HUNG after %.0fs: %s\n", c.id, r+1, d.Seconds(), hung)
				continue
			}
			res.times = append(res.times, d)
			res.up = append(res.up, bytesUp)
			res.down = append(res.down, bytesDown)
			res.conns = append(res.conns, conns)
			fmt.Printf("%-12s run %d: %7.2fs  %s MB down, %s MB up, %d TCP connections\n", c.id, r+1, d.Seconds(), benchkit.MB(bytesDown), benchkit.MB(bytesUp), conns)
		}
	}

	// The table.
	seed := -1.0
	for i, c := range all {
		if c.id == "seed" && len(results[i].times) > 0 {
			seed = stats.Median(stats.Seconds(results[i].times))
		}
	}
	fmt.Printf("\n| configuration | runs | median | min–max | seed ÷ this | this ÷ link limit | MB down the link | TCP conns |\n|---|---|---|---|---|---|---|---|\n")
	for i, c := range all {
		res := results[i]
		if res.hung != "" {
			fmt.Printf("| %s | 1 | hangs (deadlock) | — | — | — | — | — |\n", c.describe)
			continue
		}
		m := stats.Median(stats.Seconds(res.times))
		lo, hi := slices.Min(res.times).Seconds(), slices.Max(res.times).Seconds()
		speed := "—"
		if seed > 0 {
			speed = fmt.Sprintf("%.2f×", seed/m)
		}
		down := "loopback"
		if !c.direct {
			down = benchkit.MB(res.down[len(res.down)/2])
		}
		fmt.Printf("| %s | %d | %.2f s | %.2f–%.2f | %s | %.2f | %s | %d |\n", c.describe, len(res.times), m, lo, hi, speed, m/linkLimit.Seconds(), down, res.conns[0])
	}
	fmt.Printf("| link limit: %s MB ÷ %.0f Mbit/s + 1 RTT | — | %.2f s | — | %s | 1.00 | — | — |\n",
		benchkit.MB(cl.NarBytes), o.mbit, linkLimit.Seconds(), ratio(seed, linkLimit.Seconds()))
	for i, c := range all {
		if results[i].hung != "" {
			fmt.Printf("\n%s: %s\n", c.id, results[i].hung)
		}
	}
	// The model: with one connection every path costs a round trip for its
	// info and one for its NAR, serially.
	floor := -1.0
	for i, c := range all {
		if c.id == "floor" && len(results[i].times) > 0 {
			floor = stats.Median(stats.Seconds(results[i].times))
		}
	}
	model := float64(2*cl.Paths)*o.rtt.Seconds() + float64(cl.NarBytes)/bandwidth
	fmt.Printf("\nmodel, one connection: 2 round trips × %d paths × %v + %s MB ÷ %.0f Mbit/s = %.2f s", cl.Paths, o.rtt, benchkit.MB(cl.NarBytes), o.mbit, model)
	if floor > 0 {
		fmt.Printf(", + %.2f s loopback floor = %.2f s", floor, model+floor)
	}
	fmt.Println()
	return nil
}

func ratio(a, b float64) string {
	if a <= 0 || b <= 0 {
		return "—"
	}
	return fmt.Sprintf("%.2f×", a/b)
}

// substitute runs one substitution of the closure into a fresh client and
// removes the client afterwards. s is nil for the static cache, which has
// no sshd; port is where the client reaches the cache (sshd, or the proxy
// in front of sshd or of the file server).
func substitute(env *harness.Env, work string, s *harness.Server, port int, px *linkproxy.Proxy, c config, cl benchkit.Closure, public, nixcache string, o options) (d time.Duration, up, down, conns int64, hung string, err error) {
	dir, err := os.MkdirTemp(work, c.id+"-")
	if err != nil {
		return 0, 0, 0, 0, "", err
	}
	defer benchkit.RemoveAll(dir)
	var up0, down0, conns0 int64
	marked := false
	mark := func() {
		if px != nil {
			up0, down0 = px.Bytes()
			conns0 = px.Connections()
		}
		marked = true
	}
	var client *harness.Client
	clientEnv := []string(nil)
	url := ""
	switch c.via {
	case viaStatic:
		// An HTTP client needs no ssh: the key and pin NewClient makes go
		// unused.
		if client, err = env.NewClient(dir, &harness.Server{}); err != nil {
			return 0, 0, 0, 0, "", err
		}
		url = fmt.Sprintf("http://127.0.0.1:%d", port)
	case viaChannel:
		if client, err = env.NewClient(dir, s); err != nil {
			return 0, 0, 0, 0, "", err
		}
		if err := register(env, nixcache, s, "bench-"+filepath.Base(dir), client.PublicKey); err != nil {
			return 0, 0, 0, 0, "", err
		}
		// The substituter's SSH connection, made as it starts, crosses
		// the link and is counted.
		mark()
		sub, err := benchkit.StartSubstituter(env, nixcache, benchkit.SubstituterOptions{
			Dir: client.Dir, Cache: fmt.Sprintf("ssh://%s@127.0.0.1:%d", harness.CacheUser, port), Port: port,
			Identity: client.Key, HostKey: s.HostKey, Timeout: o.timeout,
		})
		if err != nil {
			return 0, 0, 0, 0, "", err
		}
		defer sub.Stop()
		url = sub.URL
	default:
		// The client's ssh config names the proxy's port (or sshd's, direct).
		target := *s
		target.Port = port
		if client, err = env.NewClient(dir, &target); err != nil {
			return 0, 0, 0, 0, "", err
		}
		if err := s.Authorize(client.PublicKey); err != nil {
			return 0, 0, 0, 0, "", err
		}
		if c.ssh != "" {
			f, err := os.OpenFile(client.SSHConfig(), os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				return 0, 0, 0, 0, "", err
			}
			_, err = f.WriteString(strings.ReplaceAll(c.ssh, "{dir}", dir))
			f.Close()
			if err != nil {
				return 0, 0, 0, 0, "", err
			}
		}
		if c.join {
			if clientEnv, err = join(env, client, s, port, public, nixcache); err != nil {
				return 0, 0, 0, 0, "", err
			}
		}
		url = client.SubstituterURL()
		if c.params != "" {
			url += "?" + c.params
		}
	}
	if clientEnv == nil {
		clientEnv = client.Environ()
		// The bench's key is the only one trusted, and require-sigs is on
		// (Nix's default): a path without its signature is not accepted.
		conf := fmt.Sprintf("substituters = %s\ntrusted-public-keys = %s\n%s", url, public, c.conf)
		if c.conf != "" {
			conf += "\n"
		}
		if err := os.WriteFile(filepath.Join(client.ConfDir, "nix.conf"), []byte(conf), 0o644); err != nil {
			return 0, 0, 0, 0, "", err
		}
	}
	if !marked {
		mark()
	}
	hangAfter := time.Duration(0)
	if c.mayHang {
		hangAfter = o.hangAfter
	}
	out, d, hung, err := benchkit.Timed(clientEnv, o.timeout, hangAfter, "nix-store", "--store", client.Store, "--realise", cl.Top)
	if px != nil {
		up1, down1 := px.Bytes()
		up, down, conns = up1-up0, down1-down0, px.Connections()-conns0
	}
	if err != nil || hung != "" {
		return d, up, down, conns, hung, err
	}
	if strings.TrimSpace(out) != cl.Top {
		return 0, 0, 0, 0, "", fmt.Errorf("nix-store --realise printed %q, want %s", out, cl.Top)
	}
	r := client.Nix("nix-store", "--query", "--requisites", cl.Top)
	if r.Err != nil {
		return 0, 0, 0, 0, "", r.Err
	}
	if n := len(strings.Fields(r.Stdout)); n != cl.Paths {
		return 0, 0, 0, 0, "", fmt.Errorf("client has %d paths of the closure, want %d", n, cl.Paths)
	}
	if c.via != viaSSH {
		// What came over HTTP is checked again: every path's contents
		// against its NAR hash, and a signature by the bench's key.
		r := client.Nix("nix", "--extra-experimental-features", "nix-command", "store", "verify", "--sigs-needed", "1", "--recursive", cl.Top)
		if r.Err != nil {
			return 0, 0, 0, 0, "", fmt.Errorf("the client store does not verify: %w", r.Err)
		}
	}
	return d, up, down, conns, "", nil
}

// join runs `nixcache client join` for the client, pointed at its nix.conf
// directory and an ssh directory of its own, registers the key join made,
// and returns the environment in which the client's ssh reads that
// directory's config, as root's would.
func join(env *harness.Env, client *harness.Client, s *harness.Server, port int, public, nixcache string) ([]string, error) {
	sshDir := filepath.Join(client.Dir, "root-ssh")
	// Like the other configurations, the cache is the only substituter:
	// join keeps cache.nixos.org, which this offline machine would retry
	// for seconds (DNS fails) on every run, measuring nothing of ours.
	if err := os.WriteFile(filepath.Join(client.ConfDir, "nix.conf"), []byte("substituters =\n"), 0o644); err != nil {
		return nil, err
	}
	r := harness.Run(env.Environ(), nixcache, "client", "join",
		"--cache", fmt.Sprintf("ssh-ng://%s@127.0.0.1:%d", harness.CacheUser, port),
		"--public-key", public, "--host-key", s.HostKey,
		"--nix-conf-dir", client.ConfDir, "--ssh-dir", sshDir, "--service-manager", "none")
	if r.Err != nil {
		return nil, r.Err
	}
	_, line, ok := strings.Cut(r.Stdout, "--key '")
	if !ok {
		return nil, fmt.Errorf("join printed no key: %s", r.Stdout)
	}
	line, _, _ = strings.Cut(line, "'")
	if err := s.Authorize(line); err != nil {
		return nil, err
	}
	e := slices.DeleteFunc(client.Environ(), func(v string) bool { return strings.HasPrefix(v, "NIX_SSHOPTS=") })
	return append(e, "NIX_SSHOPTS=-F "+filepath.Join(sshDir, "config")), nil
}
