package onboard

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/nixcache/nixcache/internal/nixkey"
	"github.com/nixcache/nixcache/internal/sshconf"
)

// nixStrings are what a Nix string literal must carry unchanged: Nix's
// escapes differ from Go's (\v, \u00a0 and \x41 are not escapes in Nix), a
// bare CR becomes LF, and "${" interpolates.
var nixStrings = []string{
	"", "plain", `"`, `\`, `\\`, `\"`, "${builtins.abort \"x\"}", "$${x}", "$", "a$", "$\\{", "''",
	"\n", "\r", "\r\n", "\t", "\v", "\f", "\x01\x1b[31m\x7f", "\u00a0", "é", "\u2028", "\\v", `\u00a0`,
	"a\"; services.openssh.enable = false; x = \"", "${", "$\"", "$\\",
}

// evalNix evaluates expr with the real nix-instantiate, without a daemon,
// and returns its value decoded from JSON into v.
func evalNix(t *testing.T, expr string, v any) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "expr.nix")
	if err := os.WriteFile(file, []byte(expr), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("nix-instantiate", "--option", "store", "dummy://", "--eval", "--strict", "--json", file).Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("nix-instantiate: %v\n%s\n%s", err, stderr, expr)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
}

func TestNixStringAsNixReadsIt(t *testing.T) {
	var b strings.Builder
	b.WriteString("[\n")
	for _, s := range nixStrings {
		b.WriteString("  " + nixString(s) + "\n")
	}
	b.WriteString("]\n")
	var got []string
	evalNix(t, b.String(), &got)
	if len(got) != len(nixStrings) {
		t.Fatalf("Nix read %d strings, want %d:\n%s", len(got), len(nixStrings), b.String())
	}
	for i, s := range nixStrings {
		if got[i] != s {
			t.Errorf("nixString(%q) = %s, which Nix reads as %q", s, nixString(s), got[i])
		}
	}
}

// The module snippet join prints evaluates, with every value as given.
func TestNixOSModuleEvaluates(t *testing.T) {
	hostKey, err := sshconf.ParseHostKey("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFZZwjpX6h2UfYxf2s1otG+HZeYNJkdH2t6aX6qjCgor")
	if err != nil {
		t.Fatal(err)
	}
	pk, err := nixkey.ParsePublicKey("cache-1:5EzbGvN5d0RQ6/tGW8DbqtSrzvzC1thk8BK5zQEmCcg=")
	if err != nil {
		t.Fatal(err)
	}
	for _, host := range []string{"cache.example.org", "x\"; y = \"${abort \"z\"}\\v\u00a0"} {
		p := &Plan{HostKey: hostKey, Req: JoinRequest{PublicKey: pk,
			Cache: sshconf.URL{Scheme: "ssh-ng", Target: sshconf.Target{User: "nix-ssh", Host: host, Port: 2222}}}}
		var got struct {
			Services struct {
				Nixcache struct {
					Client struct {
						Enable                                   bool
						Protocol, Host, User, PublicKey, HostKey string
						Port                                     int
					}
				}
			}
		}
		evalNix(t, "(import "+writeModule(t, p.NixOSModule())+" {})", &got)
		c := got.Services.Nixcache.Client
		wantKey := strings.TrimSpace(string(ssh.MarshalAuthorizedKey(hostKey)))
		if !c.Enable || c.Protocol != "ssh-ng" || c.Host != host || c.Port != 2222 || c.User != "nix-ssh" ||
			c.PublicKey != pk.String() || c.HostKey != wantKey {
			t.Errorf("the module for host %q evaluates to %+v", host, c)
		}
	}
}

// For nixcache://, the snippet asks the module for its substituter, on the
// port join was given, and passes on the cache's MaxSessions.
func TestNixOSModuleForAChannel(t *testing.T) {
	hostKey, err := sshconf.ParseHostKey("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFZZwjpX6h2UfYxf2s1otG+HZeYNJkdH2t6aX6qjCgor")
	if err != nil {
		t.Fatal(err)
	}
	pk, err := nixkey.ParsePublicKey("cache-1:5EzbGvN5d0RQ6/tGW8DbqtSrzvzC1thk8BK5zQEmCcg=")
	if err != nil {
		t.Fatal(err)
	}
	p := &Plan{HostKey: hostKey, Req: JoinRequest{PublicKey: pk, ServerMaxSessions: 16,
		Cache: sshconf.URL{Scheme: "nixcache", Target: sshconf.Target{User: "nix-ssh", Host: "cache", Port: 22}, SubstituterPort: 8080}}}
	var got struct {
		Services struct {
			Nixcache struct {
				Client struct {
					Protocol                     string
					SubstituterPort, MaxSessions int
				}
			}
		}
	}
	evalNix(t, "(import "+writeModule(t, p.NixOSModule())+" {})", &got)
	if c := got.Services.Nixcache.Client; c.Protocol != "nixcache" || c.SubstituterPort != 8080 || c.MaxSessions != 16 {
		t.Errorf("the module for a nixcache:// cache evaluates to %+v", c)
	}
}

func writeModule(t *testing.T, text string) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "nixcache-client.nix")
	if err := os.WriteFile(file, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return file
}
