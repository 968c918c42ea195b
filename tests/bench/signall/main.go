// Command signall compares `nixcache sign --all` with `nix store sign --all`
// on the same store: a fresh chroot store filled with -paths paths and served
// by a nix-daemon of its own. It runs both tools alternately, each with a
// fresh key so that each does the full work of signing every path, and
// reports the median time ratio. The machine's own store is not touched.
//
// Run as root on a machine with Nix: go run ./tests/bench/signall
package main

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nixcache/nixcache/tests/bench/stats"
	"github.com/nixcache/nixcache/tests/harness"
)

func main() {
	paths := flag.Int("paths", 20000, "how many paths the store holds")
	pairs := flag.Int("pairs", 5, "how many (nixcache, nix) pairs to time")
	flag.Parse()
	if err := run(*paths, *pairs); err != nil {
		fmt.Fprintln(os.Stderr, "signall:", err)
		os.Exit(1)
	}
}

func run(minPaths, pairs int) error {
	env, err := harness.Start()
	if err != nil {
		return err
	}
	defer env.Close()
	work, err := os.MkdirTemp("", "nixcache-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	nixcache, err := env.BuildNixcache()
	if err != nil {
		return err
	}
	store := "local?root=" + filepath.Join(work, "root")
	socket := filepath.Join(work, "daemon.sock")
	total, err := fillStore(env, work, store, minPaths)
	if err != nil {
		return err
	}
	stop, err := env.StartDaemon(store, socket)
	if err != nil {
		return err
	}
	defer stop()
	nixcacheEnv := env.Environ("NIX_DAEMON_SOCKET_PATH=" + socket)
	version := strings.TrimSpace(harness.Run(env.Environ(), "nix", "--version").Stdout)
	fmt.Printf("store: %d valid paths; %s; %d CPUs\n", total, version, runtime.NumCPU())

	tools := []struct {
		name string
		cmd  func(key string) []string
		env  []string
	}{
		{"nixcache sign --all", func(k string) []string {
			return []string{nixcache, "sign", "--all", "--secret-key-file", k}
		}, nixcacheEnv},
		// As root, nix store sign opens the store's database directly, the
		// fastest way Nix has; nixcache always goes through the daemon.
		{"nix store sign --all", func(k string) []string {
			return []string{"nix", "--extra-experimental-features", "nix-command", "--store", store, "store", "sign", "--all", "--key-file", k}
		}, withoutRemote(env.Environ())},
	}
	times := make([][]time.Duration, len(tools))
	for i := range pairs {
		// Alternate which tool goes first, so neither always meets a warm
		// or cold page cache.
		order := []int{0, 1}
		if i%2 == 1 {
			order = []int{1, 0}
		}
		for _, t := range order {
			key := filepath.Join(work, fmt.Sprintf("key-%d-%d", i, t))
			if r := harness.Run(env.Environ(), nixcache, "keygen", "--name", fmt.Sprintf("bench-%d-%d-%s", i, t, harness.Nonce()), "--secret-key-file", key); r.Err != nil {
				return r.Err
			}
			args := tools[t].cmd(key)
			start := time.Now()
			r := harness.Run(tools[t].env, args[0], args[1:]...)
			d := time.Since(start)
			if r.Err != nil {
				return r.Err
			}
			times[t] = append(times[t], d)
			fmt.Printf("pair %d: %-22s %7.2fs  %s\n", i+1, tools[t].name, d.Seconds(), strings.TrimSpace(r.Stdout+r.Stderr))
		}
	}
	var ratios []float64
	for i := range pairs {
		ratios = append(ratios, times[0][i].Seconds()/times[1][i].Seconds())
	}
	fmt.Printf("\n| tool | median of %d runs |\n|---|---|\n", pairs)
	for t := range tools {
		fmt.Printf("| `%s` | %.2f s |\n", tools[t].name, stats.Median(stats.Seconds(times[t])))
	}
	fmt.Printf("\nmedian ratio nixcache/nix over %d pairs: %.2f (per pair: %s)\n", pairs, stats.Median(ratios), fmtFloats(ratios))
	return nil
}

// fillStore adds n small content-addressed files to the chroot store and
// returns how many valid paths it then holds.
func fillStore(env *harness.Env, work, store string, n int) (int, error) {
	dir := filepath.Join(work, "fill")
	if err := os.Mkdir(dir, 0o755); err != nil {
		return 0, err
	}
	const batch = 1000
	for i := 0; i < n; i += batch {
		var files []string
		for j := i; j < min(n, i+batch); j++ {
			name := filepath.Join(dir, fmt.Sprintf("nixcache-bench-%d", j))
			if err := os.WriteFile(name, []byte(fmt.Sprintf("nixcache benchmark path %d\n", j)), 0o644); err != nil {
				return 0, err
			}
			files = append(files, name)
		}
		r := harness.Run(withoutRemote(env.Environ()), "nix-store", append([]string{"--store", store, "--add"}, files...)...)
		if r.Err != nil {
			return 0, r.Err
		}
		for _, f := range files {
			os.Remove(f)
		}
	}
	r := harness.Run(withoutRemote(env.Environ()), "nix", "--extra-experimental-features", "nix-command", "--store", store, "path-info", "--all")
	return len(strings.Fields(r.Stdout)), r.Err
}

func withoutRemote(env []string) []string {
	return slices.DeleteFunc(slices.Clone(env), func(s string) bool { return strings.HasPrefix(s, "NIX_REMOTE=") })
}

func fmtFloats(xs []float64) string {
	parts := make([]string, len(xs))
	for i, x := range xs {
		parts[i] = strconv.FormatFloat(x, 'f', 2, 64)
	}
	return strings.Join(parts, " ")
}
