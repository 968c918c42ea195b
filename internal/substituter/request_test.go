package substituter

import (
	"strings"
	"testing"
)

func TestParseRequest(t *testing.T) {
	h := nix32 // every letter of the alphabet, 32 of them
	n := h + "-" + strings.Repeat("z", narHashLen) + ".nar"
	good := map[string]request{
		"/nix-cache-info":    {kind: cacheInfo},
		"/" + h + ".narinfo": {kind: narInfo, name: h},
		"/nar/" + n:          {kind: nar, name: n},
	}
	for p, want := range good {
		got, ok := parseRequest(p)
		if !ok || got != want {
			t.Errorf("%q: %+v %v, want %+v", p, got, ok, want)
		}
		if got.upstreamPath() != p {
			t.Errorf("%q goes upstream as %q", p, got.upstreamPath())
		}
	}
	for _, p := range []string{
		"", "/", "/nix-cache-info/", "nix-cache-info",
		h + ".narinfo", "/" + h[1:] + ".narinfo", "/" + h + "0.narinfo", "/" + strings.ToUpper(h) + ".narinfo",
		"/" + strings.Replace(h, "a", "e", 1) + ".narinfo", "/nar/" + h + ".narinfo",
		"/nar/" + n + ".xz", "/nar/" + strings.Replace(n, "-", "_", 1), "/nar//" + n, "/nar/" + n[1:],
		"/nar/../" + n, "/" + h + ".narinfo/..", "/log/" + h, "/" + h + ".ls",
	} {
		if r, ok := parseRequest(p); ok {
			t.Errorf("%q accepted as %+v", p, r)
		}
	}
}

// What is accepted goes upstream as exactly what was asked, made only of
// base-32 names: no path a client sends can name another file.
func FuzzParseRequest(f *testing.F) {
	f.Add("/nix-cache-info")
	f.Add("/" + storeHash(1) + ".narinfo")
	f.Add("/nar/" + narName(1))
	f.Add("/nar/../" + narName(1))
	f.Fuzz(func(t *testing.T, p string) {
		r, ok := parseRequest(p)
		if !ok {
			return
		}
		up := r.upstreamPath()
		if up != p {
			t.Fatalf("%q goes upstream as %q", p, up)
		}
		if strings.Contains(up, "..") || strings.Count(up, "/") > 2 {
			t.Fatalf("%q names another directory", up)
		}
		for _, c := range up {
			if !strings.ContainsRune(nix32+"/.-", c) && !strings.ContainsRune("nix-cache-info", c) {
				t.Fatalf("%q has %q", up, c)
			}
		}
		if again, ok := parseRequest(up); !ok || again != r {
			t.Fatalf("%q parses back as %+v", up, again)
		}
	})
}
