package main

import (
	"os"
	"path/filepath"
	"strings"

	"github.com/nixcache/nixcache/tests/harness"
)

// knowsSetting reports whether this Nix knows a nix.conf setting (it warns
// about unknown ones).
func knowsSetting(env *harness.Env, name string) string {
	dir, err := os.MkdirTemp("", "nixcache-bench-conf-")
	if err != nil {
		return "unknown (" + err.Error() + ")"
	}
	defer os.RemoveAll(dir)
	os.WriteFile(filepath.Join(dir, "nix.conf"), []byte(name+" = 4\nexperimental-features = nix-command\n"), 0o644)
	r := harness.Run([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + env.Home, "NIX_CONF_DIR=" + dir}, "nix", "show-config")
	if strings.Contains(r.Stderr, "unknown setting '"+name+"'") {
		return "unknown (nix warns: unknown setting '" + name + "'; it came in Nix 2.16)"
	}
	if r.Err != nil {
		return "could not tell: " + r.Err.Error()
	}
	return "known"
}
