package onboard

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/nixconf"
	"github.com/nixcache/nixcache/internal/nixkey"
	"github.com/nixcache/nixcache/internal/service"
	"github.com/nixcache/nixcache/internal/signing"
	"github.com/nixcache/nixcache/internal/sshconf"
	"github.com/nixcache/nixcache/internal/substituter"
)

// Check is one line of doctor's report.
type Check struct {
	Cache  string   `json:"cache,omitempty"`
	Name   string   `json:"check"`
	Status Status   `json:"status"`
	Detail string   `json:"detail"`
	Hints  []string `json:"hints,omitempty"`
}

// Status is a check's outcome.
type Status string

const (
	OK      Status = "ok"
	Failed  Status = "failed"
	Skipped Status = "skipped"
	// Warning is a check that passed with a risk the admin should know of.
	Warning Status = "warning"
)

// DoctorOptions say where to look and what to probe.
type DoctorOptions struct {
	Loc Locations
	// Path is the store path to substitute as a probe; by default one is
	// chosen from what an ssh-ng:// cache lists.
	Path string
	// Restart is the command that restarts the daemon, for hints.
	Restart string
	// Machine names this machine in hints for the admin.
	Machine string
	// UnitDir is where join installs the substituter's systemd unit, and
	// Executable the nixcache to name in hints: for nixcache:// caches.
	UnitDir    string
	Executable string
}

// Timeouts for the network checks: each is bounded, so doctor finishes
// even against a cache that accepts connections and then says nothing.
const (
	loginTimeout      = 30 * time.Second
	substituteTimeout = 2 * time.Minute
)

type doctor struct {
	opt    DoctorOptions
	checks []Check
	daemon *service.Daemon
	conf   *nixconf.Config
	// register is the command that registers the daemon's key, for the
	// admin.
	register string
}

func (d *doctor) add(cache, name string, st Status, detail string, hints ...string) {
	d.checks = append(d.checks, Check{cache, name, st, detail, hints})
}

// Doctor checks what the root daemon will actually do with each cache join
// recorded, and says what to fix.
func Doctor(ctx context.Context, opt DoctorOptions) []Check {
	d := &doctor{opt: opt}
	dir := opt.Loc.SSHDir
	caches, err := dir.ReadManaged()
	if err != nil {
		d.add("", "joined", Failed, err.Error(), "run 'nixcache client join' again")
		return d.checks
	}
	if len(caches) == 0 {
		d.add("", "joined", Failed, fmt.Sprintf("no cache joined: %q records none", dir.Managed()),
			"run 'nixcache client join --cache URL --public-key KEY --host-key-fingerprint SHA256:...'")
		return d.checks
	}
	d.checkDaemon()
	d.checkKey()
	for _, c := range caches {
		d.checkCache(ctx, c)
	}
	return d.checks
}

// Failed reports whether any check failed.
func AnyFailed(checks []Check) bool {
	return slices.ContainsFunc(checks, func(c Check) bool { return c.Status == Failed })
}

func (d *doctor) restartHint() string {
	if d.opt.Restart != "" {
		return "restart it: " + d.opt.Restart
	}
	return "restart the Nix daemon the way it was started on this machine"
}

// checkDaemon finds the running daemon, reads the configuration it reads,
// and checks it started after that configuration last changed.
func (d *doctor) checkDaemon() {
	socket := d.opt.Loc.Socket
	confDir := d.opt.Loc.NixConfDir
	dm, err := service.FindDaemon(socket)
	switch {
	case err == nil:
		d.daemon = dm
		confDir = "/etc/nix"
		if v := dm.Env["NIX_CONF_DIR"]; v != "" {
			confDir = v
		}
		d.add("", "daemon", OK, fmt.Sprintf("nix-daemon PID %d serves %q, reading %q", dm.PID, socket, confDir))
	case errors.Is(err, service.ErrNotFound):
		hints := []string{d.restartHint()}
		if os.Geteuid() != 0 {
			hints = append(hints, "run doctor as root: it reads the daemon's process")
		}
		d.add("", "daemon", Failed, fmt.Sprintf("no nix-daemon process listens on %q", socket), hints...)
	case errors.Is(err, service.ErrUnsupported):
		d.add("", "daemon", Skipped, err.Error())
	case errors.Is(err, service.ErrUntrusted):
		d.add("", "daemon", Failed, "cannot identify the daemon: "+err.Error(),
			"something other than root's nix-daemon may be posing as it: see what listens with 'ss -xlp' and stop it",
			d.restartHint())
	default:
		d.add("", "daemon", Failed, "cannot identify the daemon: "+err.Error(), d.restartHint())
	}
	if d.conf, err = nixconf.Load(confDir); err != nil {
		d.add("", "nix.conf", Failed, err.Error(), "fix the file, then run 'nixcache client join' again")
		return
	}
	if d.daemon == nil {
		return
	}
	var latest time.Time
	var latestFile string
	for _, f := range d.conf.Files {
		if st, err := os.Stat(f); err == nil && st.ModTime().After(latest) {
			latest, latestFile = st.ModTime(), f
		}
	}
	// The start time is known to a clock tick; allow for it.
	if latestFile != "" && d.daemon.Started.Add(50*time.Millisecond).Before(latest) {
		d.add("", "daemon restarted", Failed,
			fmt.Sprintf("the daemon started at %s, before %q changed at %s: it runs with the old settings",
				d.daemon.Started.Format(time.TimeOnly), latestFile, latest.Format(time.TimeOnly)),
			d.restartHint())
		return
	}
	d.add("", "daemon restarted", OK, "the daemon started after the last change to its configuration")
}

func (d *doctor) checkKey() {
	path := d.opt.Loc.SSHDir.KeyFile()
	k, err := sshconf.ReadKey(path)
	if err != nil {
		hint := "run 'nixcache client join' again: it makes the key"
		var kp *sshconf.KeyProblem
		if errors.As(err, &kp) {
			hint = fmt.Sprintf("fix %q or move it away and join again (the admin must then register the new key)", path)
		}
		d.add("", "ssh key", Failed, err.Error(), hint)
		return
	}
	d.register = AdminCommand(d.opt.Machine, k)
	d.add("", "ssh key", OK, fmt.Sprintf("%q is %s, readable by root only", path, sshconf.Fingerprint(k)))
}

func (d *doctor) checkCache(ctx context.Context, c sshconf.Cache) {
	if d.conf != nil {
		var missing []string
		if sub := c.NixSubstituter(); !slices.Contains(d.conf.Effective("substituters"), sub) {
			missing = append(missing, "substituter "+sub)
		}
		if !slices.Contains(d.conf.Effective("trusted-public-keys"), c.PublicKey) {
			missing = append(missing, "trusted public key "+c.PublicKey)
		}
		if len(missing) > 0 {
			d.add(c.URL, "nix.conf", Failed, fmt.Sprintf("the daemon's configuration (%q) lacks %s", d.conf.Main, strings.Join(missing, " and ")),
				"run 'nixcache client join' again: it adds both and keeps everything else")
		} else {
			d.add(c.URL, "nix.conf", OK, fmt.Sprintf("substituter and trusted public key are set (%q)", d.conf.Main))
		}
	}
	if u, err := sshconf.ParseSubstituter(c.URL); err == nil && u.MaxConnections > 1 {
		d.checkMaxConnections(ctx, c)
	}
	if c.Channel() {
		d.checkChannelCache(ctx, c)
		return
	}
	d.checkOtherKeys(ctx, c)
	if !d.checkHostKey(ctx, c) {
		return
	}
	// The remote connection serves the login check and the probe: bound
	// both together.
	ctx, cancel := context.WithTimeout(ctx, loginTimeout+substituteTimeout)
	defer cancel()
	remote, ok := d.checkLogin(ctx, c)
	if !ok {
		return
	}
	if remote != nil {
		defer remote.Close()
	}
	d.checkSubstitution(ctx, c, remote)
}

// checkChannelCache checks a nixcache:// cache: the local substituter
// answers, the cache's account answers on the channel, and with a probe
// path, the substituter knows it and the daemon substitutes it. Root's
// other ssh keys are not checked: the substituter offers the cache the
// daemon's key alone.
func (d *doctor) checkChannelCache(ctx context.Context, c sshconf.Cache) {
	up := d.checkSubstituter(ctx, c)
	if !d.checkHostKey(ctx, c) || !d.checkChannel(ctx, c) {
		return
	}
	if !up {
		d.add(c.URL, "substitution", Skipped, "the substituter does not answer")
		return
	}
	if d.opt.Path != "" && !d.checkNarinfo(ctx, c, d.opt.Path) {
		return
	}
	d.checkSubstitution(ctx, c, nil)
}

func (d *doctor) checkHostKey(ctx context.Context, c sshconf.Cache) bool {
	pinned, err := sshconf.Pinned(d.opt.Loc.SSHDir.KnownHosts(), c.Target)
	if err != nil || pinned == nil {
		detail := fmt.Sprintf("no host key pinned for %s in %q", c.Target.KnownHostsName(), d.opt.Loc.SSHDir.KnownHosts())
		if err != nil {
			detail = err.Error()
		}
		d.add(c.URL, "host key", Failed, detail, "run 'nixcache client join' again with --host-key or --host-key-fingerprint")
		return false
	}
	ctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	err = sshconf.CheckPinned(ctx, c.Target, pinned)
	var changed *sshconf.HostKeyChanged
	switch {
	case errors.As(err, &changed):
		d.add(c.URL, "host key", Failed, err.Error(),
			"if the server was reinstalled or its key rotated, confirm the new fingerprint with its admin (ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub on the server)",
			fmt.Sprintf("then delete the line for %s from %q and join again with --host-key-fingerprint", c.Target.KnownHostsName(), d.opt.Loc.SSHDir.KnownHosts()),
			"otherwise someone may be intercepting the connection: do not proceed")
		return false
	case err != nil:
		d.add(c.URL, "host key", Failed, fmt.Sprintf("cannot reach %s: %v", c.Target.Addr(), err), unreachableHint(c))
		return false
	}
	d.add(c.URL, "host key", OK, fmt.Sprintf("%s presents the pinned key %s", c.Target.Addr(), sshconf.Fingerprint(pinned)))
	return true
}

func unreachableHint(c sshconf.Cache) string {
	return fmt.Sprintf("is sshd running on %s and reachable from here? builds fall back to other substituters, or to building, while it is down", c.Target.Addr())
}

// sshArgv is the ssh command the daemon runs for the cache: the same
// options (NIX_SSHOPTS in the daemon's environment) and remote command.
func (d *doctor) sshArgv(c sshconf.Cache) []string {
	argv := []string{"ssh"}
	// Doctor runs this ssh as root: its options come only from a daemon
	// FindDaemon found running as root, never from whatever else listens.
	if d.daemon != nil {
		argv = append(argv, strings.Fields(d.daemon.Env["NIX_SSHOPTS"])...)
	}
	remote := "nix-store --serve --write"
	switch {
	case strings.HasPrefix(c.URL, "ssh-ng://"):
		remote = "nix-daemon --stdio"
	case c.Channel():
		remote = substituter.ChannelCommand
	}
	return append(argv, "-x", "-a", c.Target.User+"@"+c.Target.Host, remote)
}

// checkLogin logs in as the daemon would and greets the Nix program at the
// other end. For ssh-ng:// it returns the open connection, for the probe.
func (d *doctor) checkLogin(ctx context.Context, c sshconf.Cache) (*daemon.Conn, bool) {
	argv := d.sshArgv(c)
	lctx, cancel := context.WithTimeout(ctx, loginTimeout)
	defer cancel()
	var (
		detail string
		conn   *daemon.Conn
		err    error
	)
	if strings.HasPrefix(c.URL, "ssh-ng://") {
		// The connection outlives the login check; checkCache bounds it.
		conn, err = daemon.DialCommand(ctx, argv, nil)
		if err == nil {
			detail = fmt.Sprintf("logged in as %s; nix-daemon --stdio speaks protocol %s", c.Target.User, conn.DaemonVersion)
		}
	} else {
		var v daemon.Version
		v, err = daemon.ServeHandshake(lctx, argv, nil)
		if err == nil {
			detail = fmt.Sprintf("logged in as %s; nix-store --serve speaks protocol %s", c.Target.User, v)
		}
	}
	if err != nil {
		d.add(c.URL, "ssh login", Failed, err.Error(), d.loginHints(c, err)...)
		return nil, false
	}
	d.add(c.URL, "ssh login", OK, detail)
	return conn, true
}

func (d *doctor) loginHints(c sshconf.Cache, err error) []string {
	msg := err.Error()
	switch {
	case strings.Contains(msg, "Permission denied"):
		h := []string{"the cache does not accept this machine's ssh key: ask its admin to register it"}
		if d.register != "" {
			h = append(h, d.register)
		}
		return append(h, "then the server must be rebuilt (NixOS) or its authorized keys rendered again ('nixcache clients authorized-keys')")
	case strings.Contains(msg, "Host key verification failed"), strings.Contains(msg, "IDENTIFICATION HAS CHANGED"):
		return []string{"ssh rejected the server's host key; see the host key check above"}
	case strings.Contains(msg, "Connection refused"), strings.Contains(msg, "timed out"), strings.Contains(msg, "No route"), strings.Contains(msg, "Could not resolve"):
		return []string{unreachableHint(c)}
	case errors.Is(err, context.DeadlineExceeded):
		return []string{"the login did not finish in time: the server or the network is stuck"}
	}
	var ce *channelError
	if errors.As(err, &ce) {
		switch {
		case strings.Contains(ce.stderr, "not in the clients registry"):
			h := []string{"the cache's registry does not list this machine's key: ask its admin to register it"}
			if d.register != "" {
				h = append(h, d.register)
			}
			return h
		case ce.protocol:
			return []string{"the account answered something other than nixcache's channel: it must run 'nixcache serve' as its forced command (with ExposeAuthInfo yes)"}
		}
	}
	var pe *daemon.ProtocolError
	if errors.As(err, &pe) {
		return []string{"the account runs something other than Nix: check the server's ForceCommand and that the URL's scheme (ssh:// or ssh-ng://) matches its protocol"}
	}
	return nil
}

// checkSubstitution has the local daemon substitute a path from the cache
// and checks its signature against the cache's key.
func (d *doctor) checkSubstitution(ctx context.Context, c sshconf.Cache, remote *daemon.Conn) {
	key, err := nixkey.ParsePublicKey(c.PublicKey)
	if err != nil {
		d.add(c.URL, "substitution", Failed, "the recorded public key is unusable: "+err.Error(), "run 'nixcache client join' again")
		return
	}
	ctx, cancel := context.WithTimeout(ctx, substituteTimeout)
	defer cancel()
	local, err := daemon.Dial(ctx, d.opt.Loc.Socket)
	if err != nil {
		d.add(c.URL, "substitution", Failed, err.Error(), d.restartHint())
		return
	}
	defer local.Close()
	path := d.opt.Path
	if path == "" {
		if remote == nil {
			what := "an ssh:// cache cannot list its paths"
			if c.Channel() {
				what = "a nixcache:// cache does not list its paths"
			}
			d.add(c.URL, "substitution", Skipped, what,
				"pass --path with a store path the cache serves to test a substitution")
			return
		}
		var ok bool
		if path, ok = d.probePath(c, key, remote, local); !ok {
			return
		}
	}
	if err := local.EnsurePath(path); err != nil {
		d.add(c.URL, "substitution", Failed, fmt.Sprintf("the daemon could not substitute %s: %v", path, err),
			"check the lines above; the daemon's log may say more")
		return
	}
	info, err := local.QueryPathInfo(path)
	if err != nil {
		d.add(c.URL, "substitution", Failed, err.Error())
		return
	}
	if why := signing.UntrustedReason(info, []nixkey.PublicKey{key}); why != "" {
		d.add(c.URL, "substitution", Failed, fmt.Sprintf("%s is here but %s", path, why),
			"it may have come from another substituter or been built here")
		return
	}
	d.add(c.URL, "substitution", OK, fmt.Sprintf("%s is valid here and its signature by %s verifies", path, key.Name))
}

// A probe is looked for in batches of path infos, up to a limit that keeps
// doctor quick on a large cache.
const (
	probeBatch = 256
	probeLimit = 20000
)

// probePath picks the smallest path the cache signed with key, preferring
// one this machine lacks.
func (d *doctor) probePath(c sshconf.Cache, key nixkey.PublicKey, remote, local *daemon.Conn) (string, bool) {
	all, err := remote.QueryAllValidPaths()
	if err != nil {
		d.add(c.URL, "substitution", Failed, "listing the cache's paths: "+err.Error())
		return "", false
	}
	if len(all) == 0 {
		d.add(c.URL, "substitution", Failed, "the cache serves no paths yet", "copy a path to the server and sign it ('nixcache sign --all')")
		return "", false
	}
	have, err := local.QueryValidPaths(all)
	if err != nil {
		d.add(c.URL, "substitution", Failed, "asking the local daemon: "+err.Error())
		return "", false
	}
	here := make(map[string]bool, len(have))
	for _, p := range have {
		here[p] = true
	}
	// Paths missing here first, so that the probe really substitutes; a
	// signed path this machine already has still proves the key matches.
	missing := slices.DeleteFunc(slices.Clone(all), func(p string) bool { return here[p] })
	missing = append(missing, have...)
	// Scan in batches and stop at the first batch with a signed path: on a
	// cache that signs everything that is the first batch.
	best, checked := "", 0
	var bestSize uint64
	var firstErr error
	for start := 0; start < len(missing) && best == "" && checked < probeLimit; start += probeBatch {
		batch := missing[start:min(len(missing), start+probeBatch)]
		checked += len(batch)
		err = remote.QueryPathInfos(batch, func(_ int, info *daemon.PathInfo, err error) error {
			if err != nil {
				if firstErr == nil {
					firstErr = err
				}
				return nil
			}
			if signing.UntrustedReason(info, []nixkey.PublicKey{key}) == "" && (best == "" || info.NarSize < bestSize) {
				best, bestSize = info.Path, info.NarSize
			}
			return nil
		})
		if err != nil {
			d.add(c.URL, "substitution", Failed, "reading the cache's path info: "+err.Error())
			return "", false
		}
	}
	if best == "" && firstErr != nil {
		d.add(c.URL, "substitution", Failed, fmt.Sprintf("reading the cache's path info: %v", firstErr))
		return "", false
	}
	if best == "" {
		d.add(c.URL, "substitution", Failed, fmt.Sprintf("none of the %d paths checked carries a signature by %s", checked, key.Name),
			"on the server, run 'nixcache sign --all' with the key whose public half clients trust")
		return "", false
	}
	return best, true
}

// checkOtherKeys warns when root's ssh configuration gives the cache's
// host other keys too: IdentityFile lines add up in ssh, and no setting in
// the managed block can take them back, so a cache that refuses the
// daemon's key (before the admin registers it, after a revocation) is
// offered root's other public keys.
func (d *doctor) checkOtherKeys(ctx context.Context, c sshconf.Cache) {
	others, err := d.opt.Loc.SSHDir.OtherIdentities(ctx, c.Target)
	switch {
	case err != nil:
		d.add(c.URL, "ssh keys", Skipped, err.Error())
	case len(others) > 0:
		d.add(c.URL, "ssh keys", Warning, fmt.Sprintf("root's ssh configuration also offers %s to %s when the cache refuses the daemon's key", strings.Join(others, ", "), c.Target),
			"move those IdentityFile lines into Host blocks that do not match the cache's host")
	default:
		d.add(c.URL, "ssh keys", OK, "only the daemon's key is offered to the cache")
	}
}

// checkMaxConnections fails when the daemon's Nix hangs with the
// max-connections the cache was joined with (Nix was downgraded, say).
func (d *doctor) checkMaxConnections(ctx context.Context, c sshconf.Cache) {
	v, err := daemonVersion(ctx, d.opt.Loc.Socket)
	if err == nil {
		err = sshconf.MaxConnectionsSafe(v.nix)
	}
	if err != nil {
		d.add(c.URL, "max-connections", Failed, err.Error(),
			"join again without --max-connections: substitutions from this cache would hang")
		return
	}
	d.add(c.URL, "max-connections", OK, fmt.Sprintf("Nix %s handles more than one SSH connection", v.nix))
}
