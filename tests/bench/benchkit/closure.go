// Package benchkit holds what the benchmark commands share: the closure
// they move (built once into the machine's store, rooted and signed), the
// bench's signing key, processes run in groups of their own and timed, and
// a client's `nixcache client substituter`.
package benchkit

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/nixcache/nixcache/tests/harness"
)

// closureExpr builds the benchmark's closure from a JSON spec: path i has
// spec[i].size bytes of data and refers to the paths spec[i].refs (all of
// higher index), so path 0 is the top and refers to every other path
// through them. The builder is /bin/sh with coreutils from /usr/bin (the
// harness's daemon builds with the sandbox off). Data is random bytes, so
// no compression can beat the link; "mixed" makes the second half of each
// file zeros, about 2:1 for zlib.
const closureExpr = `{ tag, spec, content }:
let
  s = builtins.fromJSON spec;
  n = builtins.length s;
  paths = builtins.genList mk n;
  mk = i:
    let
      p = builtins.elemAt s i;
      deps = map (builtins.elemAt paths) p.refs;
      size = toString p.size;
      half = toString (p.size / 2);
      rest = toString (p.size - p.size / 2);
      data = if content == "mixed"
        then "/usr/bin/head -c ${half} /dev/urandom > $out/data && /usr/bin/head -c ${rest} /dev/zero >> $out/data"
        else "/usr/bin/head -c ${size} /dev/urandom > $out/data";
    in derivation {
      name = "nixcache-bench-${toString i}";
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" "/usr/bin/mkdir $out && ${data} && echo ${tag} ${builtins.concatStringsSep " " (map toString deps)} > $out/refs" ];
    };
in builtins.elemAt paths 0
`

type pathSpec struct {
	Size int   `json:"size"`
	Refs []int `json:"refs"`
}

// closureSpec lays out n paths totalling about mb MB (10^6 bytes): one in
// a hundred is large (70% of the bytes between them, like a toolchain or a
// data set), the others are small, spread log-uniformly from 4 KiB to
// 512 KiB and scaled to the rest. The graph is a binary tree (path i refers
// to 2i+1 and 2i+2, nine levels for 500 paths) with an extra reference
// from each path in the upper quarter to a path further down, so that many
// paths are shared, as libraries are.
func closureSpec(n, mb int) []pathSpec {
	total := float64(mb) * 1e6
	large := max(1, n/100)
	isLarge := map[int]bool{}
	for k := range large {
		isLarge[(k+1)*n/(large+1)] = true
	}
	if large >= n {
		large = n - 1
	}
	spec := make([]pathSpec, n)
	for i := range spec {
		spec[i].Refs = []int{}
	}
	smallRaw := make([]float64, n)
	var smallSum float64
	phi := (math.Sqrt(5) - 1) / 2
	lo, hi := math.Log(4<<10), math.Log(512<<10)
	for i := range n {
		if isLarge[i] {
			continue
		}
		f := math.Mod(float64(i+1)*phi, 1)
		smallRaw[i] = math.Exp(lo + (hi-lo)*f)
		smallSum += smallRaw[i]
	}
	largeShare, smallShare := 0.7*total, 0.3*total
	if len(isLarge) == 0 || smallSum == 0 {
		largeShare, smallShare = total, total
	}
	for i := range n {
		if isLarge[i] {
			spec[i].Size = int(largeShare / float64(len(isLarge)))
		} else {
			spec[i].Size = max(1, int(smallRaw[i]/smallSum*smallShare))
		}
		for _, c := range []int{2*i + 1, 2*i + 2} {
			if c < n {
				spec[i].Refs = append(spec[i].Refs, c)
			}
		}
		if i < n/4 {
			// A shared reference far down the tree.
			j := n - 1 - (i*7919)%(n/2)
			if j > 2*i+2 {
				spec[i].Refs = append(spec[i].Refs, j)
			}
		}
	}
	return spec
}

// Closure is the benchmark's closure in the server store.
type Closure struct {
	Top      string
	Paths    int
	NarBytes int64
}

// BuildClosure builds the closure (once: the same flags give the same
// derivations, so a later run finds it valid), roots it under state and
// signs it with the key.
func BuildClosure(env *harness.Env, state, nixcache, secretKey string, n, mb int, content string) (Closure, error) {
	spec, err := json.Marshal(closureSpec(n, mb))
	if err != nil {
		return Closure{}, err
	}
	expr := filepath.Join(state, "closure.nix")
	if err := os.WriteFile(expr, []byte(closureExpr), 0o644); err != nil {
		return Closure{}, err
	}
	tag := fmt.Sprintf("nixcache-bench-substitute-v1-%d-%d-%s", n, mb, content)
	link := filepath.Join(state, "result-"+strings.TrimPrefix(tag, "nixcache-bench-substitute-"))
	start := time.Now()
	r := RunLong(env.Environ(), 30*time.Minute, "nix-build", expr, "--quiet", "--out-link", link,
		"--max-jobs", "4", "--cores", "1",
		"--argstr", "tag", tag, "--argstr", "spec", string(spec), "--argstr", "content", content)
	if r.Err != nil {
		return Closure{}, r.Err
	}
	top := strings.TrimSpace(r.Stdout)
	fmt.Fprintf(os.Stderr, "closure %s ready in %.1fs (rooted by %s)\n", top, time.Since(start).Seconds(), link)
	r = harness.Run(env.Environ(), "nix", "path-info", "--json", "--recursive", top)
	if r.Err != nil {
		return Closure{}, r.Err
	}
	var infos []struct {
		Path    string `json:"path"`
		NarSize int64  `json:"narSize"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &infos); err != nil {
		return Closure{}, fmt.Errorf("nix path-info --json: %v", err)
	}
	c := Closure{Top: top, Paths: len(infos)}
	for _, i := range infos {
		c.NarBytes += i.NarSize
	}
	r = RunLong(env.Environ(), 10*time.Minute, nixcache, "sign", "--secret-key-file", secretKey, "--recursive", top)
	if r.Err != nil {
		return Closure{}, r.Err
	}
	fmt.Fprintf(os.Stderr, "nixcache sign: %s\n", strings.TrimSpace(r.Stdout+r.Stderr))
	return c, nil
}

// Key makes the bench's signing key under state once and returns the
// secret key file and the public key.
func Key(env *harness.Env, state, nixcache string) (secret, public string, err error) {
	return NamedKey(env, filepath.Join(state, "secret-key"), "nixcache-bench-substitute-1", nixcache)
}

// NamedKey makes a signing key called name in the file secret once, and
// returns the file and the public key.
func NamedKey(env *harness.Env, secret, name, nixcache string) (string, string, error) {
	if _, err := os.Stat(secret); os.IsNotExist(err) {
		if r := harness.Run(env.Environ(), nixcache, "keygen", "--name", name, "--secret-key-file", secret); r.Err != nil {
			return "", "", r.Err
		}
	}
	r := harness.Run(env.Environ(), nixcache, "key", "public", "--secret-key-file", secret)
	if r.Err != nil {
		return "", "", r.Err
	}
	return secret, strings.TrimSpace(r.Stdout), nil
}

// MB formats a byte count in MB (10^6 bytes), one decimal.
func MB(b int64) string { return strconv.FormatFloat(float64(b)/1e6, 'f', 1, 64) }

// Setup is what each benchmark starts from: the harness, the nixcache it
// built, the bench's key, the closure, and the versions it runs.
type Setup struct {
	Env            *harness.Env
	Nixcache       string
	Secret, Public string
	Closure        Closure
	Nix, SSH       string // `nix --version`, `ssh -V`
}

// Start makes the Setup, the closure of paths paths and mb MB of content
// built once under state. Close its Env when done.
func Start(state string, paths, mb int, content string) (*Setup, error) {
	if err := os.MkdirAll(state, 0o755); err != nil {
		return nil, err
	}
	env, err := harness.Start()
	if err != nil {
		return nil, err
	}
	s := &Setup{Env: env}
	if s.Nixcache, err = env.Nixcache(); err == nil {
		if s.Secret, s.Public, err = Key(env, state, s.Nixcache); err == nil {
			s.Closure, err = BuildClosure(env, state, s.Nixcache, s.Secret, paths, mb, content)
		}
	}
	if err != nil {
		env.Close()
		return nil, err
	}
	s.Nix = strings.TrimSpace(harness.Run(env.Environ(), "nix", "--version").Stdout)
	s.SSH = strings.TrimSpace(harness.Run(env.Environ(), "ssh", "-V").Stderr)
	return s, nil
}
