package onboard

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/nixcache/nixcache/internal/sshconf"
)

// The checks of a nixcache:// cache: its local substituter, and the
// channel that `nixcache serve` speaks on the cache's account.

// substituterTimeout bounds each request doctor makes to the local
// substituter, which answers at once even when the cache is down.
const substituterTimeout = 10 * time.Second

// maxAnswer caps what doctor reads of any answer: nix-cache-info and a
// narinfo are a few hundred bytes.
const maxAnswer = 64 << 10

// checkSubstituter asks the local substituter for nix-cache-info, as the
// daemon does first.
func (d *doctor) checkSubstituter(ctx context.Context, c sshconf.Cache) bool {
	base := c.NixSubstituter()
	status, body, err := get(ctx, base+"/nix-cache-info")
	switch {
	case err != nil:
		d.add(c.URL, "substituter", Failed, fmt.Sprintf("%s does not answer: %v", base, err), d.substituterHints(c)...)
		return false
	case status != http.StatusOK || !strings.Contains(body, "StoreDir:"):
		d.add(c.URL, "substituter", Failed, fmt.Sprintf("%s/nix-cache-info answered %d, not a binary cache's nix-cache-info", base, status),
			"something else listens on that port: stop it, or join again with another --substituter-port")
		return false
	}
	d.add(c.URL, "substituter", OK, fmt.Sprintf("%s answers as a binary cache", base))
	return true
}

// substituterHints say how to get the substituter running again: the way
// join set it up.
func (d *doctor) substituterHints(c sshconf.Cache) []string {
	hints := []string{"while nix.conf names it and it does not answer, Nix 2.8 aborts builds that look for substitutes (NixOS/nix#6445)"}
	unit := filepath.Join(d.opt.UnitDir, SubstituterUnit)
	if _, err := os.Stat(unit); d.opt.UnitDir != "" && err == nil {
		return append(hints, "start it: systemctl enable --now "+SubstituterSocket+" "+SubstituterUnit,
			"if it stops again, see why: journalctl -u "+SubstituterUnit)
	}
	u, err := sshconf.ParseSubstituter(c.URL)
	dir, aerr := filepath.Abs(string(d.opt.Loc.SSHDir))
	if err != nil || aerr != nil || d.opt.Executable == "" {
		return append(hints, "start 'nixcache client substituter' as 'nixcache client join' printed it, and keep it running")
	}
	argv := SubstituterArgv(d.opt.Executable, c.Target, u.SubstituterPort, sshconf.Dir(dir), 0)
	return append(hints, "start it as root and keep it running (a service, or join with --service-manager systemd): "+ShellCommand(argv))
}

// checkNarinfo asks the substituter for path's narinfo.
func (d *doctor) checkNarinfo(ctx context.Context, c sshconf.Cache, path string) bool {
	hash, ok := storeHash(path)
	if !ok {
		d.add(c.URL, "narinfo", Failed, fmt.Sprintf("%q is not a store path", path), "pass --path /nix/store/HASH-NAME")
		return false
	}
	url := c.NixSubstituter() + "/" + hash + ".narinfo"
	status, body, err := get(ctx, url)
	switch {
	case err != nil:
		d.add(c.URL, "narinfo", Failed, err.Error(), d.substituterHints(c)...)
		return false
	case status == http.StatusNotFound:
		d.add(c.URL, "narinfo", Failed, fmt.Sprintf("the cache has no %s, or the substituter cannot reach it", path),
			"check the lines above; the substituter's log says whether it is connected",
			"on the server: nix-store --check-validity "+path)
		return false
	case status != http.StatusOK || !strings.Contains(body, "StorePath: "+path+"\n"):
		d.add(c.URL, "narinfo", Failed, fmt.Sprintf("%s answered %d without %s's narinfo", url, status, path))
		return false
	}
	d.add(c.URL, "narinfo", OK, fmt.Sprintf("the substituter serves the narinfo of %s", path))
	return true
}

// storeHash is the hash part of a store path, as a binary cache names its
// narinfo.
func storeHash(path string) (string, bool) {
	base := filepath.Base(path)
	if len(base) < 34 || base[32] != '-' || filepath.Dir(path) == "." {
		return "", false
	}
	for _, r := range base[:32] {
		// Nix's base-32 alphabet: digits and letters but e, o, u and t.
		if !strings.ContainsRune("0123456789abcdfghijklmnpqrsvwxyz", r) {
			return "", false
		}
	}
	return base[:32], true
}

func get(ctx context.Context, url string) (int, string, error) {
	ctx, cancel := context.WithTimeout(ctx, substituterTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return 0, "", err
	}
	// No proxy: the substituter is on loopback, and an HTTP_PROXY in
	// root's environment must not see what this machine fetches.
	client := &http.Client{Transport: &http.Transport{Proxy: nil}}
	defer client.CloseIdleConnections()
	resp, err := client.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAnswer))
	return resp.StatusCode, string(body), err
}

// checkChannel logs in as the substituter does and asks `nixcache serve`
// for nix-cache-info on the channel, with ssh and root's settings for the
// cache, so that ssh's own messages say what went wrong.
func (d *doctor) checkChannel(ctx context.Context, c sshconf.Cache) bool {
	ctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	storeDir, err := channelCacheInfo(ctx, d.sshArgv(c))
	if err != nil {
		d.add(c.URL, "ssh login", Failed, err.Error(), d.loginHints(c, err)...)
		return false
	}
	d.add(c.URL, "ssh login", OK, fmt.Sprintf("logged in as %s; nixcache serve answers on the channel (store %s)", c.Target.User, storeDir))
	return true
}

// channelError is a channel that did not answer as nixcache serve does.
type channelError struct {
	command string
	err     error
	stderr  string
	// protocol says something answered, but not HTTP from nixcache serve.
	protocol bool
}

func (e *channelError) Error() string {
	msg := fmt.Sprintf("%s: %v", e.command, e.err)
	if s := strings.TrimSpace(e.stderr); s != "" {
		msg += ": " + s
	}
	return msg
}

func (e *channelError) Unwrap() error { return e.err }

// channelCacheInfo runs argv, which opens the channel, sends one request
// for /nix-cache-info and returns the store directory the answer names.
// The request stays open until the answer is read: the channel's end of
// input would end the request too.
func channelCacheInfo(ctx context.Context, argv []string) (string, error) {
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	stderr := &cappedBuffer{max: maxAnswer}
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return "", err
	}
	if err := cmd.Start(); err != nil {
		return "", err
	}
	fail := func(err error, protocol bool) (string, error) {
		stdin.Close()
		cmd.Wait()
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return "", &channelError{strings.Join(argv, " "), err, stderr.String(), protocol}
	}
	req, err := http.NewRequest(http.MethodGet, "http://localhost/nix-cache-info", nil)
	if err != nil {
		return fail(err, false)
	}
	req.Close = true
	if err := req.Write(stdin); err != nil {
		return fail(err, false)
	}
	resp, err := http.ReadResponse(bufio.NewReader(io.LimitReader(stdout, maxAnswer)), req)
	if err != nil {
		// Nothing at all is ssh or the dispatcher refusing, which stderr
		// explains; anything else is not nixcache serve.
		return fail(err, !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF))
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fail(err, false)
	}
	if resp.StatusCode != http.StatusOK {
		return fail(fmt.Errorf("the channel answered %s", resp.Status), false)
	}
	for line := range strings.Lines(string(body)) {
		if dir, ok := strings.CutPrefix(strings.TrimSpace(line), "StoreDir: "); ok {
			stdin.Close()
			cmd.Wait()
			return dir, nil
		}
	}
	return fail(errors.New("the channel's nix-cache-info names no StoreDir"), true)
}

// cappedBuffer keeps the first max bytes written to it.
type cappedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
	max int
}

func (b *cappedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if room := b.max - b.buf.Len(); room > 0 {
		b.buf.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

func (b *cappedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
