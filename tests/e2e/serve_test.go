//go:build harness

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nixcache/nixcache/tests/harness"
)

// The dispatcher's story: on a server whose cache account runs `nixcache
// serve` for every login, a registered client gets the binary-cache channel
// and, read-only, Nix's ssh:// store; nothing else, and a key that is not in
// the registry gets nothing at all, even when sshd lets it in.
func TestServeDispatchesByWhatTheClientAsks(t *testing.T) {
	c := newCache(t, harness.Nixcache)
	closure := build(t, 3)
	sign(t, c.secretKey, "--recursive", closure.Top)

	member := newClient(t, c.server, c.publicKey)
	stranger := newClient(t, c.server, c.publicKey)
	clients(t, c.server.Registry(), "add", "--key", member.PublicKey, "member")
	// sshd accepts both keys; only the registry knows the member.
	registered := clients(t, c.server.Registry(), "authorized-keys")
	lines := append(strings.Split(strings.TrimSuffix(registered, "\n"), "\n"), stranger.PublicKey)
	if err := c.server.Authorize(lines...); err != nil {
		t.Fatal(err)
	}

	t.Run("binary-cache channel", func(t *testing.T) {
		hash := filepath.Base(closure.Top)[:32]
		out, stderr, err := sshStdin(member, httpRequests("/nix-cache-info", "/"+hash+".narinfo"), "nixcache-binary-cache")
		if err != nil {
			t.Fatalf("%v: %s", err, stderr)
		}
		for _, want := range []string{"StoreDir: /nix/store", "StorePath: " + closure.Top, "Sig: " + strings.Split(c.publicKey, ":")[0] + ":"} {
			if !strings.Contains(out, want) {
				t.Errorf("the channel's answers lack %q:\n%s", want, out)
			}
		}
	})

	t.Run("ssh:// substitutes, read-only", func(t *testing.T) {
		useURL(t, member, "ssh://"+harness.CacheUser+"@"+harness.HostAlias, c.publicKey)
		if r := member.Substitute(closure.Top); r.Err != nil {
			t.Fatalf("substitution over ssh:// failed: %v\nsshd log:\n%s", r.Err, c.server.Log())
		}
		// Nix asks for nix-store --serve --write; the dispatcher drops --write.
		upload := addToStore(t, member)
		r := member.Nix("nix", "--extra-experimental-features", "nix-command", "copy", "--to", "ssh://"+harness.CacheUser+"@"+harness.HostAlias, upload)
		if r.Err == nil {
			t.Fatalf("a client uploaded %s over ssh://", upload)
		}
		if harness.Run(env.Environ(), "nix-store", "--check-validity", upload).Err == nil {
			t.Fatalf("%s is valid on the server after a refused upload", upload)
		}
	})

	for _, tc := range []struct {
		name    string
		client  *harness.Client
		command []string
		refusal string
	}{
		{"ssh-ng is not served", member, []string{"nix-daemon", "--stdio"}, "does not serve"},
		{"no other command", member, []string{"id"}, "asked for a command the cache does not serve"},
		{"no shell", member, nil, "asked for a shell"},
		{"a key outside the registry: no channel", stranger, []string{"nixcache-binary-cache"}, "is not in the clients registry"},
		{"a key outside the registry: no ssh://", stranger, []string{"nix-store", "--serve", "--write"}, "is not in the clients registry"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, stderr, err := sshStdin(tc.client, httpRequests("/nix-cache-info"), tc.command...)
			if err == nil {
				t.Fatalf("accepted: %s", out)
			}
			if !strings.Contains(stderr, tc.refusal) || strings.Contains(out, "StoreDir") || strings.Contains(out, "uid=") {
				t.Fatalf("stdout %q, stderr %q; want the refusal %q and nothing served", out, stderr, tc.refusal)
			}
		})
	}
}

// A revocation ends a channel that is already open: the substituter keeps
// its channels for hours.
func TestServeEndsTheChannelsOfARevokedClient(t *testing.T) {
	c := newCache(t, harness.Nixcache)
	member := newClient(t, c.server, c.publicKey)
	clients(t, c.server.Registry(), "add", "--key", member.PublicKey, "member")
	if err := c.server.Authorize(member.PublicKey); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), harness.CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", "-F", member.SSHConfig(), "-T", harness.HostAlias, "nixcache-binary-cache")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	outPipe, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	defer in.Close()
	out := bufio.NewReader(outPipe)
	ask := func() int {
		t.Helper()
		if _, err := io.WriteString(in, "GET /nix-cache-info HTTP/1.1\r\nHost: cache\r\n\r\n"); err != nil {
			t.Fatal(err)
		}
		resp, err := http.ReadResponse(out, nil)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := ask(); got != http.StatusOK {
		t.Fatalf("a registered client's request: %d", got)
	}
	clients(t, c.server.Registry(), "remove", "member")
	if got := ask(); got != http.StatusForbidden {
		t.Fatalf("the same channel after the client was removed: %d, want 403", got)
	}
}

// sshStdin runs ssh to the cache as client with stdin and the remote command.
func sshStdin(client *harness.Client, stdin string, command ...string) (stdout, stderr string, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), harness.CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", append([]string{"-F", client.SSHConfig(), "-T", harness.HostAlias}, command...)...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err = cmd.Run()
	return out.String(), errb.String(), err
}

// httpRequests is HTTP/1.1 requests for paths on one connection, the last
// closing it.
func httpRequests(paths ...string) string {
	var b strings.Builder
	for i, p := range paths {
		conn := "keep-alive"
		if i == len(paths)-1 {
			conn = "close"
		}
		fmt.Fprintf(&b, "GET %s HTTP/1.1\r\nHost: cache\r\nConnection: %s\r\n\r\n", p, conn)
	}
	return b.String()
}

// useURL writes the client's nix.conf with url as its only substituter.
func useURL(t *testing.T, client *harness.Client, url, trusted string) {
	t.Helper()
	conf := fmt.Sprintf("substituters = %s\ntrusted-public-keys = %s\n", url, trusted)
	if err := os.WriteFile(filepath.Join(client.ConfDir, "nix.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
}

// addToStore adds a fresh file to the client's store and returns its path.
func addToStore(t *testing.T, client *harness.Client) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "upload-"+harness.Nonce())
	if err := os.WriteFile(f, []byte(time.Now().String()), 0o644); err != nil {
		t.Fatal(err)
	}
	r := client.Nix("nix-store", "--add", f)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	return strings.TrimSpace(r.Stdout)
}
