package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nixcache/nixcache/internal/atomicfile"
	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/nixconf"
	"github.com/nixcache/nixcache/internal/nixkey"
	"github.com/nixcache/nixcache/internal/onboard"
	"github.com/nixcache/nixcache/internal/service"
	"github.com/nixcache/nixcache/internal/sshconf"
)

func clientCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:  "client",
		Usage: "join this machine to a cache, and diagnose it",
		Description: `Run on a client machine, as root. 'join' sets up the Nix daemon to substitute
from a cache over SSH, by Nix's own ssh stores (ssh://, ssh-ng://) or through
'substituter', a local service that keeps one SSH connection to the cache
(nixcache://); 'doctor' checks that it does.`,
		Subcommands: []*cli.Command{joinCommand(ui), doctorCommand(ui), substituterCommand(ui)},
	}
}

// locationFlags point join and doctor at other files, for tests and
// unusual installs; the defaults are the real ones.
func locationFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Name: "nix-conf-dir", Usage: "Nix's configuration `DIR` (default: $NIX_CONF_DIR, else /etc/nix)"},
		&cli.StringFlag{Name: "ssh-dir", Usage: "root's ssh `DIR`, where the daemon's ssh looks (default: " + string(sshconf.DefaultDir()) + ")"},
		&cli.StringFlag{Name: "service-manager", Value: "auto", Usage: "how to restart the daemon: `auto`, systemd, launchd or none"},
		&cli.StringFlag{Name: "name", Usage: "this machine's `NAME` for the cache's registry (default: the host name)"},
		// For tests, which cannot run systemd: where the unit goes.
		&cli.StringFlag{Name: "systemd-unit-dir", Value: onboard.DefaultUnitDir, Hidden: true},
	}
}

func locations(c *cli.Context) onboard.Locations {
	loc := onboard.Locations{
		NixConfDir: c.String("nix-conf-dir"),
		SSHDir:     sshconf.Dir(c.String("ssh-dir")),
		Socket:     daemon.SocketPath(),
	}
	if loc.NixConfDir == "" {
		loc.NixConfDir = onboard.DefaultNixConfDir()
	}
	if loc.SSHDir == "" {
		loc.SSHDir = sshconf.DefaultDir()
	}
	return loc
}

func machineName(c *cli.Context) string {
	if n := c.String("name"); n != "" {
		return n
	}
	host, err := os.Hostname()
	if err != nil {
		return "this-machine"
	}
	// The short name: registry names allow no dots' worth of domain noise.
	host, _, _ = strings.Cut(host, ".")
	return host
}

func joinCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "join",
		Usage:     "make the Nix daemon substitute from a cache over SSH",
		UsageText: "nixcache client join --cache URL --public-key KEY (--host-key LINE | --host-key-fingerprint SHA256:... | --trust-on-first-use) [--max-connections N] [--server-max-sessions M] [--substituter-port PORT] [--dry-run] [--no-restart] [--nixos-module FILE]",
		Description: `Sets up this machine's Nix daemon to substitute from the cache at URL
(ssh://USER@HOST[:PORT], ssh-ng://USER@HOST[:PORT] or nixcache://USER@HOST[:PORT];
USER defaults to nix-ssh), accepting paths signed by KEY (the cache's public
signing key, NAME:BASE64):

  - makes the daemon's own ssh key, ed25519 without passphrase, mode 0600, in
    root's ssh directory (unless it exists), and prints its public line for
    the cache's admin ('nixcache clients add');
  - pins the server's host key: given as a line, or fetched and checked
    against a fingerprint, or (only with --trust-on-first-use) fetched and
    trusted. A key that differs from one pinned before is refused;
  - writes root's ssh settings for the cache (port, key, pinned host key,
    a connect timeout so a cache that is down cannot hang builds) in a
    managed file that root's ssh config includes;
  - adds the substituter and the key to nix.conf, keeping every other line,
    cache.nixos.org included, with a backup; a second run changes nothing.
    Determinate Nix's nix.custom.conf is edited instead of its nix.conf;
  - sets fallback = true unless nix.conf sets fallback, so that builds go
    on (building locally) while the cache is unreachable;
  - restarts the daemon (systemd, launchd), unless --no-restart.

--max-connections N (N > 1) lets Nix fetch over N connections at once, which
is what makes a high-latency link fast; it is refused on Nix before 2.32 and
Lix before 2.93, where an SSH store with more than one connection hangs. Nix
opens them as sessions of one SSH connection, which sshd limits to its
MaxSessions (10 unless its admin raised it): N > 10 needs --server-max-sessions M,
what the cache's admin set, and N <= M.

nixcache:// (the cache must run 'nixcache serve' for its account) does the
same for ssh, but nix.conf gets http://127.0.0.1:PORT (--substituter-port,
default 37515) and 'nixcache client substituter' serves the cache there over
one SSH connection. With systemd, join installs, enables and starts
nixcache-substituter.socket (which holds the port) and .service in
/etc/systemd/system, before the daemon restarts;
with --service-manager none it prints the command to keep running instead.
It must keep running while nix.conf names it: Nix 2.8 aborts builds on a
substituter that refuses connections. Not on macOS (launchd) yet.
--max-connections does not apply (the substituter has --channels).

Nothing is changed when anything is wrong. --dry-run prints every change as a
diff and changes nothing. A nix.conf that NixOS or nix-darwin generates is not
edited: the client module's configuration is printed instead, or written to
--nixos-module FILE.

EXAMPLES:
   nixcache client join --cache ssh-ng://nix-ssh@cache.example.org \
     --public-key cache.example.org-1:BASE64 \
     --host-key-fingerprint SHA256:jYcDuLr5w0QJD9VdkEBBi4fNAxF7b6kpsUwUzDxmGx0
   nixcache client join --cache ssh://nix-ssh@cache.example.org:2222 \
     --public-key cache.example.org-1:BASE64 \
     --host-key "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA..." --dry-run
   nixcache client join --cache nixcache://nix-ssh@cache.example.org \
     --public-key cache.example.org-1:BASE64 \
     --host-key-fingerprint SHA256:jYcDuLr5w0QJD9VdkEBBi4fNAxF7b6kpsUwUzDxmGx0`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "cache", Usage: "the cache's `URL`: ssh-ng://USER@HOST[:PORT], ssh://USER@HOST[:PORT] or nixcache://USER@HOST[:PORT]"},
			&cli.StringFlag{Name: "public-key", Usage: "the cache's public signing `KEY` (NAME:BASE64)"},
			&cli.StringFlag{Name: "host-key", Usage: "the server's ssh host key `LINE` (\"ssh-ed25519 AAAA...\")"},
			&cli.StringFlag{Name: "host-key-fingerprint", Usage: "fetch the host key and check it has this `FINGERPRINT` (SHA256:...)"},
			&cli.BoolFlag{Name: "trust-on-first-use", Usage: "fetch the host key and trust it without a check"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the changes as diffs; change nothing"},
			&cli.BoolFlag{Name: "no-restart", Usage: "do not restart the daemon; print the command instead"},
			&cli.IntFlag{Name: "max-connections", Value: 1, Usage: "substitute over `N` SSH connections (Nix 2.32+ or Lix 2.93+ only; older versions hang)"},
			&cli.IntFlag{Name: "server-max-sessions", Usage: "the cache's sshd MaxSessions, `M`, if its admin raised it from 10"},
			&cli.IntFlag{Name: "substituter-port", Value: onboard.DefaultSubstituterPort, Usage: "for nixcache://, the substituter's `PORT` on 127.0.0.1"},
			&cli.StringFlag{Name: "nixos-module", Usage: "if nix.conf is read-only (NixOS, nix-darwin), write the client module's configuration to `FILE`"},
		}, locationFlags()...),
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			req, err := joinRequest(c)
			if err != nil {
				return err
			}
			if os.Geteuid() != 0 && !c.Bool("dry-run") {
				return withHint(errors.New("join changes root's ssh files and nix.conf and restarts the daemon"), "run it as root (sudo)")
			}
			if req.Cache.Channel() {
				if req.Service, err = substituterService(ui, c); err != nil {
					return err
				}
			}
			plan, err := onboard.PlanJoin(c.Context, req)
			var ro *nixconf.ReadOnlyError
			if errors.As(err, &ro) {
				return readOnly(ui, plan, ro, c.String("nixos-module"))
			}
			if err != nil {
				return joinError(err, req)
			}
			if plan.HostKeyUnchecked != nil {
				ui.warnf("could not confirm the host key with the server (%v); ssh will check it on first use", plan.HostKeyUnchecked)
			}
			if c.Bool("dry-run") {
				ui.dryRun(plan)
				return nil
			}
			if !plan.Changed() {
				ui.joinUnchanged(plan)
				return nil
			}
			res, err := plan.Apply(time.Now())
			if err != nil {
				return err
			}
			ui.joined(plan, res)
			if others, err := req.Loc.SSHDir.OtherIdentities(c.Context, req.Cache.Target); err != nil {
				ui.warnf("could not list the keys ssh offers the cache: %v", err)
			} else if len(others) > 0 {
				ui.otherIdentities(req.Loc.SSHDir.UserConfig(), others)
			}
			started := true
			switch {
			case len(plan.ServiceSteps) > 0:
				if err := plan.StartService(); err != nil {
					started = false
					ui.serviceFailed(plan, err)
				} else {
					ui.serviceStarted(plan)
				}
			case req.Cache.Channel() && !req.Service.Systemd:
				ui.keepRunning(plan)
			}
			switch {
			case !started && len(plan.NixConf) > 0:
				// Nix 2.8 aborts builds on a substituter that refuses
				// connections: the daemon keeps its old nix.conf until
				// the service runs.
				ui.restartLater("start the substituter first, then restart the daemon")
			case len(plan.NixConf) > 0:
				restartDaemon(ui, c)
			}
			ui.forAdmin(plan, req.Machine)
			return nil
		},
	}
}

func joinRequest(c *cli.Context) (onboard.JoinRequest, error) {
	var req onboard.JoinRequest
	if c.NArg() > 0 {
		return req, errUsage{fmt.Errorf("join takes no arguments, got %q", c.Args().First())}
	}
	if c.String("cache") == "" || c.String("public-key") == "" {
		return req, errUsage{errors.New("--cache and --public-key are required")}
	}
	sources := 0
	for _, f := range []string{"host-key", "host-key-fingerprint", "trust-on-first-use"} {
		if c.IsSet(f) {
			sources++
		}
	}
	if sources != 1 {
		return req, errUsage{withHint(errors.New("give exactly one of --host-key, --host-key-fingerprint and --trust-on-first-use"),
			"ask the cache's admin for the fingerprint: 'ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub' on the server")}
	}
	u, err := sshconf.ParseURL(c.String("cache"))
	if err != nil {
		return req, errUsage{err}
	}
	if u.Channel() && c.IsSet("max-connections") {
		return req, errUsage{withHint(errors.New("--max-connections is for ssh:// and ssh-ng://: Nix does not reach a nixcache:// cache over ssh"),
			"the substituter's requests in flight are its --channels (8 by default)")}
	}
	u.MaxConnections = c.Int("max-connections")
	if u.MaxConnections < 1 || u.MaxConnections > 64 {
		return req, errUsage{fmt.Errorf("--max-connections must be between 1 and 64, got %d", u.MaxConnections)}
	}
	if c.IsSet("server-max-sessions") && c.Int("server-max-sessions") < 1 {
		return req, errUsage{fmt.Errorf("--server-max-sessions must be at least 1, got %d", c.Int("server-max-sessions"))}
	}
	switch port := c.Int("substituter-port"); {
	case !u.Channel() && c.IsSet("substituter-port"):
		return req, errUsage{withHint(errors.New("--substituter-port is for nixcache:// caches"), "Nix reaches ssh:// and ssh-ng:// caches itself")}
	case u.Channel() && (port < 1 || port > 65535):
		return req, errUsage{fmt.Errorf("--substituter-port must be between 1 and 65535, got %d", port)}
	case u.Channel():
		u.SubstituterPort = port
	}
	pk, err := nixkey.ParsePublicKey(c.String("public-key"))
	if err != nil {
		return req, errUsage{withHint(fmt.Errorf("--public-key: %w", err), "give the cache's public key as NAME:BASE64, as 'nixcache key public' prints it on the server")}
	}
	fp := c.String("host-key-fingerprint")
	if fp != "" && sshconf.CheckFingerprint(fp) != nil {
		return req, errUsage{withHint(errors.New("--host-key-fingerprint must be a SHA256 fingerprint: \"SHA256:\" and 43 characters"),
			"on the server: ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub (prints SHA256:...)")}
	}
	req = onboard.JoinRequest{
		Cache:     u,
		PublicKey: pk,
		HostKey:   onboard.HostKeySource{Line: c.String("host-key"), Fingerprint: fp, TOFU: c.Bool("trust-on-first-use")},
		Machine:   machineName(c),
		Loc:       locations(c),
		// 0 when not given: OpenSSH's default applies.
		ServerMaxSessions: c.Int("server-max-sessions"),
	}
	return req, nil
}

// substituterService is how join keeps a nixcache:// cache's substituter
// running: a systemd unit, or (--service-manager none, or no systemd here)
// a command the admin keeps running.
func substituterService(ui *ui, c *cli.Context) (onboard.ServiceSetup, error) {
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		return onboard.ServiceSetup{}, fmt.Errorf("cannot tell where this nixcache is, for the substituter's service: %w", err)
	}
	svc := onboard.ServiceSetup{Executable: exe, UnitDir: c.String("systemd-unit-dir")}
	launchd := withHint(errors.New("nixcache:// needs a service for the substituter, and join installs one for systemd only: launchd is not supported yet"),
		"nothing was changed",
		"join with ssh:// or ssh-ng:// instead, or with --service-manager none and keep the command it prints running yourself")
	switch name := c.String("service-manager"); name {
	case "systemd":
		svc.Systemd = true
	case "none":
	case "launchd":
		return svc, launchd
	case "", "auto":
		m, err := service.Detect()
		switch {
		case err == nil && m.Name == "systemd":
			svc.Systemd = true
		case err == nil && m.Name == "launchd", runtime.GOOS == "darwin":
			return svc, launchd
		default:
			ui.warnf("systemd does not run this machine: the substituter's service is not installed")
		}
	default:
		return svc, errUsage{fmt.Errorf("unknown service manager %q: use auto, systemd, launchd or none", name)}
	}
	return svc, nil
}

// joinError adds what to do to the ways a join is refused.
func joinError(err error, req onboard.JoinRequest) error {
	var mismatch *onboard.HostKeyMismatch
	var changed *sshconf.HostKeyChanged
	var syntax *nixconf.SyntaxError
	var unsafe *onboard.UnsafeMaxConnections
	var name *onboard.MachineNameError
	var sessions *onboard.TooManySessions
	switch {
	case errors.As(err, &sessions) && sessions.Default:
		return withHint(err, "nothing was changed",
			fmt.Sprintf("join with --max-connections %d or fewer", sessions.MaxSessions),
			"or, if the cache's admin raised MaxSessions for the cache account (services.nixcache.server.maxSessions on NixOS), say so with --server-max-sessions M")
	case errors.As(err, &sessions):
		return withHint(err, "nothing was changed",
			fmt.Sprintf("join with --max-connections %d or fewer, or ask the cache's admin to raise MaxSessions", sessions.MaxSessions))
	case errors.As(err, &name):
		return withHint(err, "nothing was changed",
			"pass --name NAME: the name the cache's admin registers this machine under (the default is the host name)")
	case errors.As(err, &unsafe):
		return withHint(err, "nothing was changed",
			"join without --max-connections (one connection works on every Nix), or upgrade Nix first")
	case errors.As(err, &mismatch):
		return withHint(err, "nothing was changed",
			"check the fingerprint with the cache's admin; if it is right, someone may be intercepting the connection")
	case errors.As(err, &changed):
		return withHint(err, "nothing was changed",
			"if the server's host key really changed, confirm the new fingerprint with its admin",
			fmt.Sprintf("then delete the line for %s from %q and join again", req.Cache.Target.KnownHostsName(), req.Loc.SSHDir.KnownHosts()))
	case errors.As(err, &syntax):
		return withHint(err, "nothing was changed: fix the line and run join again")
	}
	return withHint(err, "nothing was changed")
}

func restartDaemon(ui *ui, c *cli.Context) {
	if c.String("service-manager") == "none" {
		ui.restartLater("restart nix-daemon the way it is started on this machine")
		return
	}
	m, err := service.ByName(c.String("service-manager"))
	if err != nil {
		ui.noServiceManager(err)
		return
	}
	if c.Bool("no-restart") {
		ui.restartLater(m.Command())
		return
	}
	if err := m.Run(); err != nil {
		ui.warnf("restarting the daemon failed: %v", err)
		ui.hint("restart it yourself: %s", m.Command())
		return
	}
	ui.restarted(m.Command())
}

func doctorCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "doctor",
		Usage:     "check that the Nix daemon can substitute from the joined caches",
		UsageText: "nixcache client doctor [--json] [--path STORE-PATH]",
		Description: `Checks, for each cache joined with 'nixcache client join', what the root
daemon will actually do, and prints each check with what to fix:

  - the running daemon's configuration has the substituter and the key, and
    the daemon was restarted after the last change to it;
  - the daemon's ssh key exists and only root can read it;
  - the host key is pinned and the server still presents it;
  - ssh with the daemon's settings logs in to the cache account, and Nix
    (nix-daemon --stdio or nix-store --serve) answers at the other end;
  - the daemon substitutes a path from the cache and its signature verifies
    with the cache's key. An ssh-ng:// cache lists its paths and the smallest
    signed one missing here is used; for ssh://, give one with --path.

For a nixcache:// cache, instead of Nix's ssh login:

  - the local substituter answers on http://127.0.0.1:PORT/nix-cache-info;
  - ssh logs in to the cache account and 'nixcache serve' answers a request
    for nix-cache-info on the channel the substituter uses;
  - with --path, the substituter serves the path's narinfo and the daemon
    substitutes it, with a signature by the cache's key.

Exits 1 when any check fails. Run it as root: it reads the daemon's process.

EXAMPLES:
   nixcache client doctor
   nixcache client doctor --json --path /nix/store/...-hello-2.12`,
		Flags: append([]cli.Flag{
			&cli.BoolFlag{Name: "json", Usage: "print the checks as JSON"},
			&cli.StringFlag{Name: "path", Usage: "substitute `STORE-PATH` as the probe"},
		}, locationFlags()...),
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return errUsage{fmt.Errorf("doctor takes no arguments, got %q", c.Args().First())}
			}
			opt := onboard.DoctorOptions{Loc: locations(c), Path: c.String("path"), Machine: machineName(c), UnitDir: c.String("systemd-unit-dir")}
			if exe, err := os.Executable(); err == nil {
				opt.Executable = exe
			}
			if m, err := service.ByName(c.String("service-manager")); err == nil {
				opt.Restart = m.Command()
			}
			checks := onboard.Doctor(c.Context, opt)
			if c.Bool("json") {
				if err := ui.json(map[string]any{"ok": !onboard.AnyFailed(checks), "checks": checks}); err != nil {
					return err
				}
			} else {
				ui.checks(checks)
			}
			if onboard.AnyFailed(checks) {
				return errFailed
			}
			return nil
		},
	}
}

// readOnly handles a nix.conf that NixOS, nix-darwin or home-manager
// generates: the client module's configuration is printed, or written to
// file, and nothing else changes.
func readOnly(ui *ui, plan *onboard.Plan, ro *nixconf.ReadOnlyError, file string) error {
	err := fmt.Errorf("%q is read-only (%s): nix.conf is generated by NixOS, nix-darwin or home-manager", ro.Path, ro.Reason)
	if plan == nil || plan.HostKey == nil {
		return withHint(err, "use the nixcache client module in your system configuration")
	}
	module := plan.NixOSModule()
	if file != "" {
		if werr := atomicfile.Create(file, []byte(module), 0o644); werr != nil {
			return withHint(werr, "choose a --nixos-module file that does not exist yet")
		}
	}
	return ui.readOnly(err, module, file)
}
