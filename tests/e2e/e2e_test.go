//go:build harness

// Package e2e tells the seed's story against the real thing: a key made by
// nixcache, a closure built into the server's store and signed with
// `nixcache sign`, served by sshd to the nix-ssh account, and substituted
// by fresh client stores that trust only that key.
package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/tests/harness"
)

var (
	env      *harness.Env
	nixcache string // the CLI, built once for the whole package
)

func TestMain(m *testing.M) {
	os.Exit(harness.RunTests(m, &env, func(e *harness.Env) (err error) {
		nixcache, err = e.BuildNixcache()
		return err
	}))
}

// cache is a server with a signing key, as an admin sets one up.
type cache struct {
	server       *harness.Server
	secretKey    string
	publicKey    string
	registryFile string
}

func newCache(t *testing.T, proto harness.Protocol) *cache {
	t.Helper()
	server, err := env.StartServer(proto)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(server.Close)
	c := &cache{server: server}
	c.secretKey, c.publicKey = keygen(t, "cache-"+harness.Nonce()+"-1")
	return c
}

// keygen makes a key pair with nixcache and returns the secret key's path
// and the public key.
func keygen(t *testing.T, name string) (secretFile, public string) {
	t.Helper()
	secretFile = filepath.Join(t.TempDir(), "secret-key")
	r := harness.Run(env.Environ(), nixcache, "keygen", "--name", name, "--secret-key-file", secretFile)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	return secretFile, strings.TrimSpace(r.Stdout)
}

// sign signs paths with nixcache through the server's daemon.
func sign(t *testing.T, secretKey string, paths ...string) string {
	t.Helper()
	r := harness.Run(env.Environ(), nixcache, append([]string{"sign", "--secret-key-file", secretKey}, paths...)...)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	return r.Stdout
}

func build(t *testing.T, n int) harness.Closure {
	t.Helper()
	cl, err := env.Build(n)
	if err != nil {
		t.Fatal(err)
	}
	return cl
}

// client makes a client of c that is authorized on the server and trusts
// the given keys.
func (c *cache) client(t *testing.T, trusted ...string) *harness.Client {
	t.Helper()
	cl, err := env.NewClient(t.TempDir(), c.server)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.server.Authorize(cl.PublicKey); err != nil {
		t.Fatal(err)
	}
	if err := cl.UseCache(trusted...); err != nil {
		t.Fatal(err)
	}
	return cl
}

var protocols = []harness.Protocol{harness.SSH, harness.SSHNG}

func eachProtocol(t *testing.T, f func(t *testing.T, proto harness.Protocol)) {
	for _, p := range protocols {
		t.Run(string(p), func(t *testing.T) { f(t, p) })
	}
}

func TestSignedClosureSubstitutes(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto harness.Protocol) {
		c := newCache(t, proto)
		// The admin builds a closure on the server and signs it.
		closure := build(t, 5)
		if out := sign(t, c.secretKey, "--recursive", closure.Top); !strings.HasPrefix(out, "signed 5,") {
			t.Fatalf("nixcache sign reported %q, want 5 paths signed", out)
		}
		// A fresh client that knows only the substituter and the key
		// substitutes the whole closure.
		client := c.client(t, c.publicKey)
		if r := client.Substitute(closure.Top); r.Err != nil {
			t.Fatalf("substitution failed: %v\nsshd log:\n%s", r.Err, c.server.Log())
		}
		for _, p := range closure.Paths {
			if !client.Has(p) {
				t.Errorf("%s is missing from the client store", p)
			}
		}
		// The client's Nix checks the signatures it received.
		r := client.Nix("nix", "--extra-experimental-features", "nix-command", "store", "verify", "--sigs-needed", "1", "--recursive", closure.Top)
		if r.Err != nil {
			t.Fatalf("client-side verification: %v", r.Err)
		}
	})
}

// refused checks that substituting cl.Top fails and leaves none of cl.Paths
// in the client's store.
func refused(t *testing.T, client *harness.Client, what string, cl harness.Closure) {
	t.Helper()
	if r := client.Substitute(cl.Top); r.Err == nil {
		t.Fatalf("%s: substitution succeeded", what)
	}
	for _, p := range cl.Paths {
		if client.Has(p) {
			t.Errorf("%s: %s entered the client store", what, p)
		}
	}
}

func TestUnsignedPathIsRefused(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto harness.Protocol) {
		c := newCache(t, proto)
		closure := build(t, 3)
		// Sign all but the top path, and check that verify sees just that.
		top := closure.Top
		var rest []string
		for _, p := range closure.Paths {
			if p != top {
				rest = append(rest, p)
			}
		}
		sign(t, c.secretKey, rest...)
		r := harness.Run(env.Environ(), nixcache, "verify", "--trusted-key", c.publicKey, "--recursive", top)
		if r.Err == nil || strings.TrimSpace(r.Stdout) != top+": no signatures" {
			t.Fatalf("nixcache verify: err=%v stdout=%q, want only %s unsigned", r.Err, r.Stdout, top)
		}
		refused(t, c.client(t, c.publicKey), "an unsigned path", harness.Closure{Top: top, Paths: []string{top}})
	})
}

func TestForeignKeyIsRefused(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto harness.Protocol) {
		c := newCache(t, proto)
		closure := build(t, 3)
		sign(t, c.secretKey, "--recursive", closure.Top)
		// The client trusts another key, even one with the cache's key name.
		_, other := keygen(t, strings.SplitN(c.publicKey, ":", 2)[0])
		refused(t, c.client(t, other), "a closure signed by a key the client does not trust", closure)
	})
}

func TestUnauthorizedClientIsRefused(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto harness.Protocol) {
		c := newCache(t, proto)
		closure := build(t, 2)
		sign(t, c.secretKey, "--recursive", closure.Top)
		client := c.client(t, c.publicKey)
		// Another machine's key is authorized, not this one's.
		other, err := env.NewClient(t.TempDir(), c.server)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.server.Authorize(other.PublicKey); err != nil {
			t.Fatal(err)
		}
		refused(t, client, "a client whose key is not authorized", closure)
		r := client.SSH("true")
		if r.Err == nil || !strings.Contains(r.Stderr, "Permission denied") {
			t.Fatalf("ssh with an unauthorized key: err=%v stderr=%q, want permission denied", r.Err, r.Stderr)
		}
	})
}

func TestCacheAccountHasNoShell(t *testing.T) {
	eachProtocol(t, func(t *testing.T, proto harness.Protocol) {
		c := newCache(t, proto)
		client := c.client(t, c.publicKey)
		marker := "shell-" + harness.Nonce()
		// The command is replaced by the forced serve command, which reads
		// the protocol from stdin and has nothing to say to an empty one.
		r := client.SSH("echo", marker)
		if strings.Contains(r.Stdout, marker) {
			t.Fatalf("a command ran on the cache account: %q", r.Stdout)
		}
		if !strings.Contains(c.server.Log(), "forced-command") {
			t.Errorf("sshd did not force the serve command; log:\n%s", c.server.Log())
		}
		// No terminal either.
		r = client.SSH("-tt", "sh", "-c", "'echo "+marker+"'")
		if strings.Contains(r.Stdout, marker) {
			t.Fatalf("a shell ran on the cache account with a terminal: %q", r.Stdout)
		}
		if !strings.Contains(r.Stderr, "PTY allocation request failed") {
			t.Errorf("sshd granted a terminal; ssh said %q", r.Stderr)
		}
	})
}

// Before Nix 2.17 the daemon lets only trusted users add signatures; nixcache
// says so and what to do. From 2.17 on any user may (clients still check
// the signatures against their own trusted keys).
func TestUntrustedUserCannotSign(t *testing.T) {
	closure := build(t, 1)
	dir, err := os.MkdirTemp("", "nixcache-untrusted-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	secret, _ := keygen(t, "untrusted-1")
	key := filepath.Join(dir, "secret-key")
	data, err := os.ReadFile(secret)
	if err != nil {
		t.Fatal(err)
	}
	const nobody = 65534
	if err := os.WriteFile(key, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(key, nobody, nobody); err != nil {
		t.Fatal(err)
	}
	r := harness.Run(env.Environ(), "setpriv", "--reuid", fmt.Sprint(nobody), "--regid", fmt.Sprint(nobody), "--clear-groups",
		nixcache, "sign", "--secret-key-file", key, closure.Top)
	version := daemonVersion(t)
	if olderThan(version, 2, 17) {
		if r.Err == nil || !strings.Contains(r.Stderr, "does not trust this user") ||
			!strings.Contains(r.Stderr, "hint: run as root, or add this user to trusted-users") {
			t.Fatalf("Nix %s: an untrusted user's sign: err=%v stderr=%q, want a refusal with a hint", version, r.Err, r.Stderr)
		}
	} else if r.Err != nil {
		t.Fatalf("Nix %s lets any user add signatures, yet sign failed: %v", version, r.Err)
	}
}

// daemonVersion is the Nix version the daemon announces in its handshake.
func daemonVersion(t *testing.T) string {
	t.Helper()
	c, err := daemon.Dial(context.Background(), env.Socket)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if c.DaemonNixVersion == "" {
		t.Fatalf("daemon at protocol %s does not say its Nix version", c.DaemonVersion)
	}
	return c.DaemonNixVersion
}

// olderThan compares the major and minor parts of a Nix version.
func olderThan(version string, major, minor int) bool {
	var ma, mi int
	fmt.Sscanf(version, "%d.%d", &ma, &mi)
	return ma < major || ma == major && mi < minor
}
