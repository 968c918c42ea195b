package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os/user"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nixcache/nixcache/internal/sshconf"
	"github.com/nixcache/nixcache/internal/substituter"
)

// defaultListen is where the substituter listens unless told otherwise:
// loopback only, a port of its own.
const defaultListen = "127.0.0.1:37515"

func substituterCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "substituter",
		Usage:     "serve the cache to the local Nix as an HTTP binary cache, over one SSH connection",
		UsageText: "nixcache client substituter [--cache ssh://USER@HOST[:PORT]] [--listen 127.0.0.1:PORT] [--channels N] [--server-max-sessions N] [--spool-dir DIR] [--spool-bytes SIZE] [--positive-ttl DURATION] [--negative-ttl DURATION] [--upload-user NAME]... [--upload-spool-bytes SIZE] [--ssh-dir DIR | --identity-file FILE --known-hosts-file FILE]",
		Description: `Runs until stopped, as root (it uses the daemon's ssh key): listens on
loopback and answers Nix's binary-cache HTTP API from the cache, over one SSH
connection to the cache account made with the files 'nixcache client join'
left in root's ssh directory: the daemon's key, and the cache's pinned host
key, the only one ever accepted. Many requests share the connection, each on
its own channel, so a closure substitutes as fast as from an HTTP cache
instead of at two round trips per path. Point Nix at it in nix.conf:

   substituters = http://127.0.0.1:37515
   trusted-public-keys = <the cache's key, as join added it>

The cache must run 'nixcache serve' as the account's forced command. Keep the
substituter running whenever nix.conf names it (as a service): with the cache
down it answers so that Nix builds at once, but a substituter that does not
answer at all makes Nix retry for seconds and then, on Nix 2.8, abort the
build (NixOS/nix#6445).

What it adds to plain forwarding:

  - narinfo answers are kept in memory for --positive-ttl (found) and
    --negative-ttl (not found), Nix's own defaults;
  - when Nix asks for a path's narinfo it lacks the path: the narinfos of
    its closure are fetched at once, and its NAR into a spool on disk
    (--spool-dir, at most --spool-bytes in all; a bigger NAR is only
    streamed when Nix asks). NARs are never held in memory whole;
  - while the cache cannot be reached, Nix is answered at once so that it
    builds instead (fallback), and the connection is made again in the
    background, backing off up to 30s. State changes go to standard error.

--channels is how many requests may be in flight at once; sshd refuses more
sessions per connection than its MaxSessions (default 10), so --channels may
not exceed --server-max-sessions.

Uploads: a client whose key has the push role uploads through it, with
'nixcache push' or with Nix's own copy:

   nix copy --to 'http://127.0.0.1:37515?compression=zstd' PATH...

Anyone on this machine can reach the port, so uploads (every PUT and POST)
are taken only from root and from the users named with --upload-user: the
kernel says whose socket each request comes from; the others get 403. Reads
stay open to every local user. An upload goes to the cache as the NAR itself,
compressed on the wire when that pays: tell nix copy ?compression=zstd (fast)
or ?compression=none, since its default, xz, is slow to make and is undone
here anyway (xz, zstd, bzip2 and none are read; others are refused). Each NAR
file nix copy sends waits on disk, in a private file under --spool-dir, until
its narinfo arrives: at most --upload-spool-bytes of them at once, each for
at most an hour. Uploads use the NAR channels, never all of them, so Nix
keeps substituting during a push.

EXAMPLES:
   nixcache client substituter
   nixcache client substituter --cache ssh://nix-ssh@cache.example.org:2222 \
     --listen 127.0.0.1:8080 --spool-bytes 4G
   nixcache client substituter --upload-user ci --upload-user alice`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "cache", Usage: "the cache's `URL`, ssh://USER@HOST[:PORT] (default: the one cache joined)"},
			&cli.StringFlag{Name: "listen", Value: defaultListen, Usage: "serve Nix on `ADDR`, a loopback address and port"},
			&cli.IntFlag{Name: "channels", Value: substituter.DefaultChannels, Usage: "open at most `N` channels on the connection at once"},
			&cli.IntFlag{Name: "server-max-sessions", Value: 10, Usage: "the cache's sshd MaxSessions, `N`, which --channels may not exceed"},
			&cli.StringFlag{Name: "spool-dir", Usage: "prefetch NARs under `DIR` (default: $TMPDIR, else /tmp)"},
			&cli.StringFlag{Name: "spool-bytes", Value: "1G", Usage: "hold at most `SIZE` of prefetched NARs (K, M, G suffixes; 0: prefetch none)"},
			&cli.DurationFlag{Name: "positive-ttl", Value: substituter.DefaultPositiveTTL, Usage: "keep narinfos found for `DURATION`"},
			&cli.DurationFlag{Name: "negative-ttl", Value: substituter.DefaultNegativeTTL, Usage: "remember paths not found for `DURATION`"},
			&cli.StringSliceFlag{Name: "upload-user", Usage: "take uploads from the local user `NAME` too, besides root (repeatable)"},
			&cli.StringFlag{Name: "upload-spool-bytes", Value: "4G", Usage: "hold at most `SIZE` of NAR files nix copy sent that wait for their narinfos (K, M, G suffixes)"},
			&cli.StringFlag{Name: "ssh-dir", Usage: "root's ssh `DIR`, where join left the key and host key (default: " + string(sshconf.DefaultDir()) + ")"},
			&cli.StringFlag{Name: "identity-file", Usage: "log in with the private key in `FILE` (default: join's, in --ssh-dir)"},
			&cli.StringFlag{Name: "known-hosts-file", Usage: "accept only the host key pinned in `FILE` (default: join's, in --ssh-dir)"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			opt, listen, err := substituterOptions(c, ui)
			if err != nil {
				return err
			}
			dir := sshconf.Dir(c.String("ssh-dir"))
			if dir == "" {
				dir = sshconf.DefaultDir()
			}
			target, err := substituterTarget(c.String("cache"), dir)
			if err != nil {
				return err
			}
			files := substituterFiles{key: dir.KeyFile(), knownHosts: dir.KnownHosts()}
			if f := c.String("identity-file"); f != "" {
				files.key = f
			}
			if f := c.String("known-hosts-file"); f != "" {
				files.knownHosts = f
			}
			return runSubstituter(c.Context, ui, files, target, listen, opt)
		},
	}
}

func substituterOptions(c *cli.Context, ui *ui) (substituter.Options, string, error) {
	var opt substituter.Options
	if c.NArg() > 0 {
		return opt, "", errUsage{fmt.Errorf("substituter takes no arguments, got %q", c.Args().First())}
	}
	listen := c.String("listen")
	if err := loopbackOnly(listen); err != nil {
		return opt, "", errUsage{err}
	}
	maxSessions := c.Int("server-max-sessions")
	opt.Channels = c.Int("channels")
	if maxSessions < 1 {
		return opt, "", errUsage{fmt.Errorf("--server-max-sessions must be at least 1, got %d", maxSessions)}
	}
	if opt.Channels < 1 || opt.Channels > maxSessions {
		return opt, "", errUsage{withHint(fmt.Errorf("--channels must be between 1 and %d (--server-max-sessions), got %d", maxSessions, opt.Channels),
			"sshd refuses more sessions on one connection than its MaxSessions; if the cache's sshd allows more, say so with --server-max-sessions")}
	}
	spool, err := parseSize(c.String("spool-bytes"))
	if err != nil {
		return opt, "", errUsage{fmt.Errorf("--spool-bytes: %w", err)}
	}
	opt.SpoolBytes = spool
	if spool == 0 {
		opt.SpoolBytes = -1
	}
	opt.SpoolDir = c.String("spool-dir")
	if opt.UploadBytes, err = parseSize(c.String("upload-spool-bytes")); err != nil {
		return opt, "", errUsage{fmt.Errorf("--upload-spool-bytes: %w", err)}
	}
	if opt.UploadBytes == 0 {
		return opt, "", errUsage{withHint(errors.New("--upload-spool-bytes must be more than 0"), "nix copy's NAR files wait there for their narinfos")}
	}
	opt.UploadUIDs = uploadUIDs(ui, c.StringSlice("upload-user"))
	opt.PositiveTTL, opt.NegativeTTL = c.Duration("positive-ttl"), c.Duration("negative-ttl")
	if opt.PositiveTTL < 0 || opt.NegativeTTL < 0 {
		return opt, "", errUsage{errors.New("--positive-ttl and --negative-ttl cannot be negative")}
	}
	return opt, listen, nil
}

// uploadUIDs are the uids of the --upload-user users, looked up now. A
// name that is no user is reported and left out, not fatal: a substituter
// that does not start makes Nix abort builds (NixOS/nix#6445), and leaving
// a user out only refuses its uploads.
func uploadUIDs(ui *ui, names []string) []uint32 {
	var uids []uint32
	for _, name := range names {
		u, err := user.Lookup(name)
		var uid uint64
		if err == nil {
			uid, err = strconv.ParseUint(u.Uid, 10, 32)
		}
		if err != nil {
			ui.warnf("--upload-user %q is no user here: its uploads are refused", name)
			continue
		}
		uids = append(uids, uint32(uid))
	}
	return uids
}

// loopbackOnly refuses an address other machines could reach: the
// substituter serves whatever the cache lets this machine's key fetch.
func loopbackOnly(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("--listen %q is not HOST:PORT", addr)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("--listen %q: bad port", addr)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return withHint(fmt.Errorf("--listen %q is not a loopback address", addr),
			"the substituter serves this machine only: listen on 127.0.0.1 or [::1]")
	}
	return nil
}

// parseSize reads a byte count with an optional K, M or G (powers of 1024).
func parseSize(s string) (int64, error) {
	shift := 0
	switch {
	case strings.HasSuffix(s, "K"):
		shift = 10
	case strings.HasSuffix(s, "M"):
		shift = 20
	case strings.HasSuffix(s, "G"):
		shift = 30
	}
	if shift > 0 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)>>shift {
		return 0, errors.New("give a size in bytes, such as 1073741824 or 1G")
	}
	return n << shift, nil
}

// substituterTarget is the cache account to connect to: given, with the
// port join recorded when none is given, or else the one cache joined.
// join's records are read only when needed: a service given everything by
// flags may not be able to read root's ssh directory.
func substituterTarget(cache string, dir sshconf.Dir) (sshconf.Target, error) {
	if cache == "" {
		joined, err := dir.ReadManaged()
		if err != nil {
			return sshconf.Target{}, err
		}
		switch len(joined) {
		case 1:
			return joined[0].Target, nil
		case 0:
			return sshconf.Target{}, withHint(fmt.Errorf("no cache joined (nothing in %q)", dir.Managed()),
				"run 'nixcache client join' first, or give --cache")
		}
		return sshconf.Target{}, errUsage{withHint(errors.New("more than one cache is joined"), "say which with --cache")}
	}
	u, err := sshconf.ParseURL(cache)
	if err != nil {
		return sshconf.Target{}, errUsage{err}
	}
	if u.Scheme != "ssh" {
		return sshconf.Target{}, errUsage{fmt.Errorf("--cache %q: give it as ssh://USER@HOST[:PORT]; the substituter speaks its own protocol over ssh", cache)}
	}
	if raw, err := url.Parse(cache); err == nil && raw.Port() != "" {
		return u.Target, nil
	}
	joined, err := dir.ReadManaged()
	if err != nil {
		return sshconf.Target{}, err
	}
	for _, j := range joined {
		if j.Target.User == u.Target.User && j.Target.Host == u.Target.Host {
			u.Target.Port = j.Target.Port
		}
	}
	return u.Target, nil
}

// substituterFiles are what proves who is who: join's files in root's ssh
// directory, or a service's own copies.
type substituterFiles struct{ key, knownHosts string }

func runSubstituter(ctx context.Context, ui *ui, files substituterFiles, target sshconf.Target, listen string, opt substituter.Options) error {
	signer, err := substituter.ReadSigner(files.key)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return withHint(err, "run 'nixcache client join' first: it makes the daemon's key")
		}
		if errors.Is(err, fs.ErrPermission) {
			return withHint(err, "run it as root: the key is the Nix daemon's")
		}
		return err
	}
	logf := func(format string, args ...any) { ui.notef("substituter: "+format, args...) }
	opt.Logf = logf
	up, err := substituter.NewUpstream(substituter.UpstreamConfig{Target: target, Signer: signer, KnownHosts: files.knownHosts, Logf: logf})
	if err != nil {
		return substituterError(err, target, files)
	}
	l, err := substituterListener(listen)
	if err != nil {
		return err
	}
	defer l.Close()
	if err := up.Connect(ctx); err != nil {
		return substituterError(err, target, files)
	}
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	go up.Run(ctx)
	srv, err := substituter.NewServer(up, opt)
	if err != nil {
		return err
	}
	defer srv.Close()
	// ConnContext: the substituter asks the kernel about each upload's
	// connection (its user, and that it is still the same connection).
	hs := &http.Server{Handler: srv, ReadHeaderTimeout: 10 * time.Second, ConnContext: srv.ConnContext}
	served := make(chan error, 1)
	go func() { served <- hs.Serve(l) }()
	logf("serving %s on http://%s (substituters = http://%s in nix.conf)", target, l.Addr(), l.Addr())
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	hs.Shutdown(shutdown)
	return nil
}

// substituterError adds what to do to the errors that stop the substituter.
func substituterError(err error, target sshconf.Target, files substituterFiles) error {
	var hk *substituter.HostKeyError
	var auth *substituter.AuthError
	switch {
	case errors.As(err, &hk) && hk.Mismatch:
		return withHint(err, "nothing was sent to the server",
			"if its host key really changed, confirm the new fingerprint with the cache's admin",
			fmt.Sprintf("then delete the line for %s from %q and run 'nixcache client join' again", target.KnownHostsName(), files.knownHosts))
	case errors.As(err, &hk):
		return withHint(err, "run 'nixcache client join' first: it pins the cache's host key, which is the only one accepted")
	case errors.As(err, &auth):
		return withHint(err, fmt.Sprintf("ask the cache's admin to add this machine: the key's public line is in %q", files.key+".pub"))
	}
	return err
}

// substituterListener is the socket systemd passed (socket activation), or
// a new one on listen. A socket systemd holds is the substituter's from
// boot on: while the substituter restarts, no local user can take its port
// and answer Nix in its place (the unit's port is not privileged).
func substituterListener(listen string) (net.Listener, error) {
	l, err := systemdSocket(listen)
	if err != nil {
		return nil, err
	}
	if l == nil {
		l, err := net.Listen("tcp", listen)
		if err != nil {
			return nil, withHint(err, "choose another port with --listen")
		}
		return l, nil
	}
	if err := loopbackOnly(l.Addr().String()); err != nil {
		l.Close()
		return nil, fmt.Errorf("the socket systemd passed: %w", err)
	}
	return l, nil
}
