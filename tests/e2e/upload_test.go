//go:build harness

package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nix-community/go-nix/pkg/nixbase32"

	"github.com/nixcache/nixcache/internal/audit"
	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/tests/harness"
)

// Uploads' stories (docs/uploads.md), each through the real sshd, `nixcache
// serve`, `nixcache publisher` and nix-daemon: a push client's machine
// uploads what it has, with `nixcache push` or `nix copy`, through its
// substituter; a pull client's machine then substitutes it, signed by the
// cache's key. Every refusal leaves nothing valid or changed on the server.

// newUploadCache starts a cache that takes uploads; its publisher signs with
// the Env's cache key, which the server's daemon trusts.
func newUploadCache(t *testing.T, u harness.Uploads) *cache {
	t.Helper()
	server, err := env.StartUploadServer(u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(server.Close)
	return &cache{server: server, secretKey: env.CacheSecretKey, publicKey: env.CachePublicKey, registryFile: server.Registry()}
}

// member is a client machine of a cache: joined, registered with a role,
// its substituter running and its daemon substituting through it.
type member struct {
	m    *harness.Machine
	name string
	sub  *harness.Substituter
	c    *cache
}

func (c *cache) member(t *testing.T, role harness.Role, substituterArgs ...string) *member {
	t.Helper()
	return c.memberAt(t, role, cacheURL(c), substituterArgs...)
}

// memberAt is member with the cache reached at url (through a proxy).
func (c *cache) memberAt(t *testing.T, role harness.Role, url string, substituterArgs ...string) *member {
	t.Helper()
	m := newMachine(t, debianNixConf, true)
	joinURLForSubstituter(t, c, m, url)
	name := filepath.Base(m.Dir)
	if role == harness.Push {
		clients(t, c.registryFile, "set-role", name, string(harness.Push))
	}
	if err := c.server.AuthorizeRegistry(); err != nil {
		t.Fatal(err)
	}
	sub, err := m.StartSubstituter(url, substituterArgs...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Stop)
	useSubstituter(t, m, sub.URL, c.publicKey)
	return &member{m: m, name: name, sub: sub, c: c}
}

// push runs `nixcache push --to` the member's substituter, as root.
func (u *member) push(args ...string) harness.Result {
	return harness.Run(u.m.Environ(), nixcache, append([]string{"push", "--to", u.sub.URL}, args...)...)
}

// has puts paths into the member's store only.
func (u *member) has(t *testing.T, paths ...harness.Path) {
	t.Helper()
	if err := u.m.Import(paths...); err != nil {
		t.Fatal(err)
	}
}

// published checks that every path of cl is valid on the server, signed by
// the cache's key, with the NAR the client had; and that a fresh pull
// client substitutes cl.Top through its substituter, checking that
// signature.
func (c *cache) published(t *testing.T, chain []harness.Path) {
	t.Helper()
	for _, p := range chain {
		info := pathInfo(t, p.Path)
		if info == nil {
			t.Fatalf("%s is not valid on the server\npublisher:\n%s", p.Path, c.server.Publisher.Log())
		}
		if got := "sha256:" + nixbase32.EncodeToString(info.NarHash); got != p.NarHash() {
			t.Errorf("%s: the server's NarHash %s, the client's %s", p.Path, got, p.NarHash())
		}
	}
	cl := harness.ClosureOf(chain)
	if r := harness.Run(env.Environ(), nixcache, "verify", "--trusted-key", c.publicKey, "--recursive", cl.Top); r.Err != nil {
		t.Fatalf("the server's copy is not signed by the cache key: %v\n%s", r.Err, r.Stdout)
	}
	puller := c.member(t, harness.Pull)
	if r := puller.m.Realise(cl.Top); r.Err != nil {
		t.Fatalf("a pull client could not substitute %s: %v\nsubstituter:\n%s", cl.Top, r.Err, puller.sub.Log())
	}
	if r := harness.Run(puller.m.Environ(), "nix", "store", "verify", "--sigs-needed", "1", "--recursive", cl.Top); r.Err != nil {
		t.Fatalf("the pull client's Nix does not verify the cache's signatures: %v", r.Err)
	}
}

func pathInfo(t *testing.T, path string) *daemon.PathInfo {
	t.Helper()
	info, err := env.PathInfo(path)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// roots is what the roots directory holds: each symlink's name under it
// and its target.
func (c *cache) roots(t *testing.T) map[string]string {
	t.Helper()
	out := map[string]string{}
	root := c.server.Publisher.Roots
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.Type()&fs.ModeSymlink != 0 {
			target, err := os.Readlink(path)
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(root, path)
			out[rel] = target
		} else if !d.IsDir() {
			out[path] = "not a symlink"
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// rootedFor checks that each path is rooted under the client's directory.
func (c *cache) rootedFor(t *testing.T, client string, paths ...string) {
	t.Helper()
	roots := c.roots(t)
	for _, p := range paths {
		if target, ok := roots[filepath.Join("pushed", client, filepath.Base(p))]; !ok || target != p {
			t.Errorf("%s is not rooted under pushed/%s: roots %v", p, client, roots)
		}
	}
}

// records is the audit log, decoded.
func (c *cache) records(t *testing.T) []audit.Record {
	t.Helper()
	var out []audit.Record
	for i, line := range c.server.Publisher.Audit() {
		if line == "" {
			continue
		}
		var r audit.Record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("audit log line %d is not a record: %v\n%s", i+1, err, line)
		}
		out = append(out, r)
	}
	return out
}

// audited waits (serve posts a record once it answered) for a record of
// client about path (or its hash part) with status and one of ops.
func (c *cache) audited(t *testing.T, client, path string, status int, ops ...string) audit.Record {
	t.Helper()
	hash := filepath.Base(path)[:32]
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		for _, r := range c.records(t) {
			if r.Client == client && strings.Contains(r.Path, hash) && r.Status == status && slices.Contains(ops, r.Op) {
				return r
			}
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(c.server.Publisher.AuditLog)
			t.Fatalf("no audit record of %s, %s, status %d, op %v:\n%s", client, path, status, ops, b)
		}
	}
}

func TestPushThenPullSubstitutes(t *testing.T) {
	c := newUploadCache(t, harness.Uploads{})
	pusher := c.member(t, harness.Push)

	t.Run("nixcache push --recursive", func(t *testing.T) {
		chain := harness.Chain("pushed", 4, 16<<10)
		pusher.has(t, chain...)
		top := chain[len(chain)-1].Path
		if r := pusher.push("--recursive", top); r.Err != nil {
			t.Fatalf("%v\nsubstituter:\n%s\npublisher:\n%s", r.Err, pusher.sub.Log(), c.server.Publisher.Log())
		}
		c.published(t, chain)
		c.rootedFor(t, pusher.name, harness.ClosureOf(chain).Paths...)
		for _, p := range chain {
			rec := c.audited(t, pusher.name, p.Path, http.StatusCreated, audit.OpUpload)
			if rec.Role != string(harness.Push) || rec.Bytes < int64(len(p.NAR)) || !strings.HasPrefix(rec.Key, "SHA256:") {
				t.Errorf("the upload of %s is recorded as %+v", p.Path, rec)
			}
		}
		// Pushing again sends nothing: the cache has it all.
		before := len(c.records(t))
		if r := pusher.push("--recursive", top); r.Err != nil {
			t.Fatalf("pushing what the cache has: %v", r.Err)
		}
		for _, r := range c.records(t)[before:] {
			if r.Op == audit.OpUpload {
				t.Errorf("pushing again uploaded %s", r.Path)
			}
		}
	})

	for _, tc := range []struct{ name, url string }{
		{"nix copy with zstd", "?compression=zstd"},
		{"nix copy with xz (Nix's default)", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			chain := harness.Chain("copied", 3, 16<<10)
			pusher.has(t, chain...)
			r := harness.Run(pusher.m.Environ(), "nix", "copy", "--from", pusher.m.StoreURI(), "--to", pusher.sub.URL+tc.url, chain[len(chain)-1].Path)
			if r.Err != nil {
				t.Fatalf("%v\nsubstituter:\n%s\npublisher:\n%s", r.Err, pusher.sub.Log(), c.server.Publisher.Log())
			}
			c.published(t, chain)
			c.rootedFor(t, pusher.name, harness.ClosureOf(chain).Paths...)
		})
	}

	t.Run("the audit log sums it up", func(t *testing.T) {
		raw, err := os.ReadFile(c.server.Publisher.AuditLog)
		if err != nil {
			t.Fatal(err)
		}
		if bytes.Contains(raw, []byte("ssh-ed25519")) || bytes.Contains(raw, []byte("AAAA")) {
			t.Errorf("the audit log holds key material:\n%s", raw)
		}
		if fi, err := os.Stat(c.server.Publisher.AuditLog); err != nil || fi.Mode().Perm()&0o007 != 0 {
			t.Errorf("the audit log is readable by everyone: %v %v", fi.Mode(), err)
		}
		sums := auditSummary(t, c.server.Publisher.AuditLog)
		push, ok := sums[pusher.name]
		if !ok || push.Uploads != 10 || push.Role != string(harness.Push) || push.BytesReceived < 10*16<<10 || push.Refusals != 0 {
			t.Errorf("the push client's summary: %+v (want 10 uploads)", push)
		}
		var pulls int
		for name, s := range sums {
			if name != pusher.name {
				pulls++
				if s.Role != string(harness.Pull) || s.Requests == 0 || s.BytesSent == 0 || s.Uploads != 0 {
					t.Errorf("a pull client's summary: %+v", s)
				}
			}
		}
		if pulls != 3 {
			t.Errorf("%d pull clients in the summary, want 3: %+v", pulls, sums)
		}
		one := harness.Run(env.Environ(), nixcache, "audit", c.server.Publisher.AuditLog, "--client", pusher.name)
		if one.Err != nil || !strings.Contains(one.Stdout, pusher.name) {
			t.Errorf("nixcache audit --client: %v\n%s", one.Err, one.Stdout)
		}
	})
}

// auditSummary is `nixcache audit FILE --json`, by client.
func auditSummary(t *testing.T, file string) map[string]audit.Summary {
	t.Helper()
	r := harness.Run(env.Environ(), nixcache, "audit", file, "--json")
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	var list []audit.Summary
	if err := json.Unmarshal([]byte(r.Stdout), &list); err != nil {
		t.Fatalf("nixcache audit --json: %v\n%s", err, r.Stdout)
	}
	out := map[string]audit.Summary{}
	for _, s := range list {
		out[s.Client] = s
	}
	return out
}

// A hostile push client sends what no honest one would. The server
// refuses each, whether the request comes through the substituter or
// straight on the channel with the client's key, and nothing is valid,
// rooted or changed afterwards.
func TestUploadRefusals(t *testing.T) {
	c := newUploadCache(t, harness.Uploads{MaxNarSize: "256K"})
	pusher := c.member(t, harness.Push)
	puller := c.member(t, harness.Pull)

	// A path the cache has, pushed honestly.
	kept := harness.NewPath("kept", 4096)
	pusher.has(t, kept)
	if r := pusher.push(kept.Path); r.Err != nil {
		t.Fatalf("%v\npublisher:\n%s", r.Err, c.server.Publisher.Log())
	}
	keptInfo := pathInfo(t, kept.Path)
	if keptInfo == nil {
		t.Fatal("the honest push left nothing valid")
	}

	upload := func(p harness.Path, nar []byte) []byte {
		return append([]byte(p.Narinfo()+"\n"), nar...)
	}
	base := harness.NewPath("base", 1024)
	other := harness.NewPath("other", 4096)
	good := harness.NewPath("good", 4096)
	big := harness.NewPath("big", 300<<10)
	orphan := harness.NewPath("orphan", 1024, base.Path)
	// The kept path again, with other contents and their true hash.
	forged := harness.Path{Path: kept.Path, NAR: harness.NAR([]byte("forged " + harness.Nonce())), References: kept.References}

	for _, tc := range []struct {
		name   string
		by     *member
		hash   string
		body   []byte
		path   string // what must not be valid (or must stay as it was)
		status int
		says   string
	}{
		{"a pull key's upload", puller, good.HashPart(), upload(good, good.NAR), good.Path, http.StatusForbidden, "pull"},
		{"a NAR that does not match its NarHash", pusher, good.HashPart(), upload(good, other.NAR), good.Path, http.StatusUnprocessableEntity, ""},
		{"a reference the cache lacks", pusher, orphan.HashPart(), upload(orphan, orphan.NAR), orphan.Path, http.StatusConflict, filepath.Base(base.Path)},
		{"a NAR over the cache's limit", pusher, big.HashPart(), upload(big, big.NAR), big.Path, http.StatusRequestEntityTooLarge, ""},
		{"a narinfo for another path", pusher, other.HashPart(), upload(good, good.NAR), good.Path, http.StatusBadRequest, ""},
		{"another NAR for a valid path", pusher, forged.HashPart(), upload(forged, forged.NAR), kept.Path, http.StatusConflict, ""},
	} {
		for _, via := range []string{"through the substituter", "on the channel"} {
			t.Run(tc.name+" "+via, func(t *testing.T) {
				rootsBefore := c.roots(t)
				var status int
				var says string
				if via == "on the channel" {
					status, says = channelUpload(t, tc.by, tc.hash, tc.body)
				} else {
					status, says = substituterUpload(t, tc.by, tc.hash, tc.body)
				}
				if status != tc.status || !strings.Contains(says, tc.says) {
					t.Errorf("answered %d %q, want %d naming %q\npublisher:\n%s", status, says, tc.status, tc.says, c.server.Publisher.Log())
				}
				if tc.path == kept.Path {
					after := pathInfo(t, kept.Path)
					if after == nil || !bytes.Equal(after.NarHash, keptInfo.NarHash) || !slices.Equal(after.Sigs, keptInfo.Sigs) ||
						after.RegistrationTime != keptInfo.RegistrationTime {
						t.Errorf("the valid path changed: %+v, was %+v", after, keptInfo)
					}
				} else if pathInfo(t, tc.path) != nil {
					t.Errorf("%s is valid on the server after a refusal", tc.path)
				}
				if after := c.roots(t); !maps.Equal(after, rootsBefore) {
					t.Errorf("the roots changed: %v, were %v", after, rootsBefore)
				}
				// The record names the path the narinfo names, or the hash
				// part the request named.
				c.audited(t, tc.by.name, tc.path, tc.status, audit.OpUpload, audit.OpRefused)
			})
		}
	}

	t.Run("the audit sums it up per client", func(t *testing.T) {
		sums := auditSummary(t, c.server.Publisher.AuditLog)
		// Uploads the cache refused are not uploads; a pull key's
		// attempts are refusals.
		if s := sums[pusher.name]; s.Uploads != 1 || s.BytesReceived < int64(len(big.NAR)) {
			t.Errorf("the push client's summary: %+v, want 1 upload", s)
		}
		if s := sums[puller.name]; s.Refusals != 2 || s.Uploads != 0 {
			t.Errorf("the pull client's summary: %+v, want 2 refusals", s)
		}
	})
}

// substituterUpload PUTs body as an upload through the member's
// substituter, as root (the test's own uid), and returns the answer.
func substituterUpload(t *testing.T, u *member, hash string, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, u.sub.URL+"/nixcache-upload/"+hash, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%v\nsubstituter:\n%s", err, u.sub.Log())
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, string(b)
}

// channelUpload sends body as an upload on a channel of its own, with the
// member's key and ssh settings, the substituter out of the way.
func channelUpload(t *testing.T, u *member, hash string, body []byte) (int, string) {
	t.Helper()
	head := fmt.Sprintf("PUT /nixcache-upload/%s HTTP/1.1\r\nHost: cache\r\nContent-Length: %d\r\nConnection: close\r\n\r\n", hash, len(body))
	resp, stderr := channel(t, u, append([]byte(head), body...))
	if resp == nil {
		t.Fatalf("no answer on the channel; ssh said:\n%s", stderr)
	}
	return resp.StatusCode, resp.Body
}

type answer struct {
	StatusCode int
	Body       string
}

// channel runs the channel's command on the cache with the member's key
// and the ssh settings join wrote, sends request, and reads one answer. It
// keeps its end open until the answer is read, as the substituter does:
// the end of a channel's input is the client going away.
func channel(t *testing.T, u *member, request []byte) (*answer, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), harness.CommandTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ssh", "-F", filepath.Join(u.m.SSHDir, "nixcache_config"), "-T",
		harness.CacheUser+"@127.0.0.1", "nixcache-binary-cache")
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var errb bytes.Buffer
	cmd.Stderr = &errb
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// The server may answer before it read it all, and then stop reading.
	go in.Write(request)
	var a *answer
	if resp, err := http.ReadResponse(bufio.NewReader(out), nil); err == nil {
		b, _ := io.ReadAll(resp.Body)
		a = &answer{resp.StatusCode, string(b)}
	}
	in.Close()
	cmd.Wait()
	return a, errb.String()
}

// In published mode a path the server has but nobody published is not
// there for any client; pushing the same NAR proves possession and
// publishes it.
func TestPublishedModeHidesWhatIsNotPublished(t *testing.T) {
	c := newUploadCache(t, harness.Uploads{PublishMode: "published"})
	hidden := build(t, 2)
	sign(t, c.secretKey, "--recursive", hidden.Top)
	pusher := c.member(t, harness.Push)
	puller := c.member(t, harness.Pull)
	info := pathInfo(t, hidden.Top)
	narURL := "/nar/" + filepath.Base(hidden.Top)[:32] + "-" + nixbase32.EncodeToString(info.NarHash) + ".nar"

	for _, u := range []*member{puller, pusher} {
		for _, get := range []string{"/" + filepath.Base(hidden.Top)[:32] + ".narinfo", narURL} {
			resp, stderr := channel(t, u, []byte(httpRequests(get)))
			if resp == nil || resp.StatusCode != http.StatusNotFound {
				t.Errorf("GET %s by a %s client in published mode: %+v, want 404 (%s)", get, u.name, resp, stderr)
			}
		}
	}
	if r := puller.m.Realise(hidden.Top); r.Err == nil || puller.m.Has(hidden.Top) {
		t.Errorf("a pull client substituted an unpublished path")
	}
	// Nix's ssh:// store cannot be restricted, so it is not served at all.
	r := harness.Run(puller.m.Environ(), "ssh", "-F", filepath.Join(puller.m.SSHDir, "nixcache_config"), "-T",
		harness.CacheUser+"@127.0.0.1", "nix-store", "--serve", "--write")
	if r.Err == nil || !strings.Contains(r.Stderr, "published mode") {
		t.Errorf("nix-store --serve in published mode: %v\n%s", r.Err, r.Stderr)
	}
	// The unpublished paths are what the cache lacks.
	missing := "POST /nixcache-missing HTTP/1.1\r\nHost: cache\r\nConnection: close\r\nContent-Length: %d\r\n\r\n%s"
	list := strings.Join(hidden.Paths, "\n") + "\n"
	resp, _ := channel(t, puller, []byte(fmt.Sprintf(missing, len(list), list)))
	if resp == nil || resp.StatusCode != http.StatusOK || strings.Fields(resp.Body) == nil || len(strings.Fields(resp.Body)) != len(hidden.Paths) {
		t.Errorf("missing in published mode: %+v, want all of %v", resp, hidden.Paths)
	}

	// A closure pushed is published, and a pull client substitutes it.
	chain := harness.Chain("published", 3, 8<<10)
	pusher.has(t, chain...)
	if r := pusher.push("--recursive", chain[len(chain)-1].Path); r.Err != nil {
		t.Fatalf("%v\npublisher:\n%s", r.Err, c.server.Publisher.Log())
	}
	c.published(t, chain)

	// The push client has the hidden paths too (the same NARs): pushing
	// them proves it and publishes them, without importing anything.
	export := harness.Run(env.Environ(), "nix-store", "--export", hidden.Paths[0], hidden.Paths[1])
	if export.Err != nil {
		t.Fatal(export.Err)
	}
	imp := exec.Command("nix-store", "--import")
	imp.Env, imp.Stdin = pusher.m.Environ(), strings.NewReader(export.Stdout)
	if out, err := imp.CombinedOutput(); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if r := pusher.push("--recursive", hidden.Top); r.Err != nil {
		t.Fatalf("%v\npublisher:\n%s", r.Err, c.server.Publisher.Log())
	}
	for _, p := range hidden.Paths {
		c.audited(t, pusher.name, p, http.StatusOK, audit.OpUpload)
	}
	if after := pathInfo(t, hidden.Top); !bytes.Equal(after.NarHash, info.NarHash) || after.RegistrationTime != info.RegistrationTime {
		t.Errorf("proving possession changed the path: %+v, was %+v", after, info)
	}
	c.rootedFor(t, pusher.name, hidden.Paths...)
	fresh := c.member(t, harness.Pull)
	if r := fresh.m.Realise(hidden.Top); r.Err != nil {
		t.Fatalf("the path published by proof of possession is not served: %v\n%s", r.Err, fresh.sub.Log())
	}
}

// The substituter takes uploads only from root and --upload-user users:
// a local user cannot put paths into the cache with the machine's key.
func TestUploadFromALocalUserIsRefused(t *testing.T) {
	c := newUploadCache(t, harness.Uploads{})
	pusher := c.member(t, harness.Push)
	chain := harness.Chain("local-user", 2, 4096)
	pusher.has(t, chain...)
	top := chain[len(chain)-1].Path
	for _, cmd := range [][]string{
		{nixcache, "push", "--to", pusher.sub.URL, "--recursive", top},
		{"nix", "copy", "--from", pusher.m.StoreURI(), "--to", pusher.sub.URL, top},
	} {
		r := pusher.m.RunAs(harness.Nobody, cmd[0], cmd[1:]...)
		// The substituter's refusal, not any other failure.
		if r.Err == nil || !strings.Contains(r.Stderr, "--upload-user users; uid 65534 is neither") {
			t.Errorf("%v as uid %d: %v, want the substituter's refusal", cmd, harness.Nobody, r.Err)
		}
		for _, p := range chain {
			if pathInfo(t, p.Path) != nil {
				t.Fatalf("%v as uid %d made %s valid on the server", cmd, harness.Nobody, p.Path)
			}
		}
	}
	if roots := c.roots(t); len(roots) != 0 {
		t.Errorf("roots after refused uploads: %v", roots)
	}
	for _, r := range c.records(t) {
		if r.Op == audit.OpUpload {
			t.Errorf("the cache saw an upload from a refused local user: %+v", r)
		}
	}
	// The same user, named with --upload-user, may.
	pusher.sub.Stop()
	sub, err := pusher.m.StartSubstituter(cacheURL(c), "--upload-user", "nobody")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sub.Stop)
	if r := pusher.m.RunAs(harness.Nobody, nixcache, "push", "--to", sub.URL, "--recursive", top); r.Err != nil {
		t.Fatalf("an --upload-user's push: %v\n%s", r.Err, sub.Log())
	}
	c.published(t, chain)
}

// Two push clients upload overlapping closures at once: both succeed, each
// path is valid with its NAR, and each is rooted for a client that
// uploaded it.
func TestConcurrentOverlappingUploads(t *testing.T) {
	c := newUploadCache(t, harness.Uploads{})
	a, b := c.member(t, harness.Push), c.member(t, harness.Push)
	shared := harness.Chain("shared", 30, 4096)
	sharedTop := shared[len(shared)-1].Path
	onlyA, onlyB := harness.NewPath("only-a", 4096, sharedTop), harness.NewPath("only-b", 4096, sharedTop)
	a.has(t, append(slices.Clone(shared), onlyA)...)
	b.has(t, append(slices.Clone(shared), onlyB)...)

	results := make(chan error, 2)
	for _, u := range []struct {
		m   *member
		top string
	}{{a, onlyA.Path}, {b, onlyB.Path}} {
		go func() { results <- u.m.push("--recursive", u.top).Err }()
	}
	for range 2 {
		if err := <-results; err != nil {
			t.Errorf("a concurrent push failed: %v\npublisher:\n%s", err, c.server.Publisher.Log())
		}
	}
	c.published(t, append(slices.Clone(shared), onlyA))
	c.published(t, []harness.Path{onlyB})
	c.rootedFor(t, a.name, onlyA.Path)
	c.rootedFor(t, b.name, onlyB.Path)
	roots := c.roots(t)
	for _, p := range shared {
		rootA, okA := roots[filepath.Join("pushed", a.name, filepath.Base(p.Path))]
		rootB, okB := roots[filepath.Join("pushed", b.name, filepath.Base(p.Path))]
		if !okA && !okB || okA && rootA != p.Path || okB && rootB != p.Path {
			t.Errorf("%s is not rooted for a client that uploaded it: %v", p.Path, roots)
		}
	}
	for name, target := range roots {
		if strings.HasPrefix(name, filepath.Join("pushed", a.name)+"/") && target == onlyB.Path ||
			strings.HasPrefix(name, filepath.Join("pushed", b.name)+"/") && target == onlyA.Path {
			t.Errorf("%s is rooted for a client that did not upload it", name)
		}
	}
	// Each path was imported once: one 201 each, the other client's
	// upload of it (if it raced) a 200.
	created := map[string]int{}
	for _, r := range c.records(t) {
		if r.Op == audit.OpUpload && r.Status == http.StatusCreated {
			created[r.Path]++
		}
	}
	for _, p := range shared {
		if created[p.Path] != 1 {
			t.Errorf("%s was imported %d times", p.Path, created[p.Path])
		}
	}
}

// An upload cut at a random byte of its SSH connection leaves nothing
// valid on the server, and the same push succeeds when tried again.
func TestInterruptedUploadLeavesNothingAndCanBeRetried(t *testing.T) {
	c := newUploadCache(t, harness.Uploads{})
	proxy, err := harness.StartCutProxy(c.server.Addr())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proxy.Close() })
	pusher := c.memberAt(t, harness.Push, fmt.Sprintf("ssh://%s@127.0.0.1:%d", harness.CacheUser, proxy.Port()))
	big := harness.NewPath("interrupted", 4<<20)
	pusher.has(t, big)

	// The cut falls within the NAR's bytes: set NIXCACHE_TEST_CUT_AT to
	// replay a failure.
	cut := int64(1 + time.Now().UnixNano()%int64(len(big.NAR)))
	if s := os.Getenv("NIXCACHE_TEST_CUT_AT"); s != "" {
		fmt.Sscan(s, &cut)
	}
	t.Logf("cutting the SSH connection after %d more bytes (NIXCACHE_TEST_CUT_AT=%d replays it); the NAR has %d", cut, cut, len(big.NAR))
	proxy.CutAfter(cut)
	r := pusher.push(big.Path)
	if !proxy.Cut() {
		t.Fatalf("the connection was not cut: the push sent fewer than %d bytes (%v)", cut, r.Err)
	}
	if r.Err == nil {
		t.Errorf("the push succeeded although its connection was cut")
	}
	time.Sleep(time.Second) // whatever the server still does with it
	if pathInfo(t, big.Path) != nil {
		t.Fatalf("%s is valid after its upload was cut\npublisher:\n%s", big.Path, c.server.Publisher.Log())
	}
	if roots := c.roots(t); len(roots) != 0 {
		t.Errorf("roots after the cut: %v", roots)
	}

	// The substituter connects again; the push is retried until it does.
	var retry harness.Result
	for deadline := time.Now().Add(60 * time.Second); time.Now().Before(deadline); time.Sleep(time.Second) {
		if retry = pusher.push(big.Path); retry.Err == nil {
			break
		}
	}
	if retry.Err != nil {
		t.Fatalf("the retry failed: %v\nsubstituter:\n%s\npublisher:\n%s", retry.Err, pusher.sub.Log(), c.server.Publisher.Log())
	}
	c.published(t, []harness.Path{big})
	c.rootedFor(t, pusher.name, big.Path)
}
