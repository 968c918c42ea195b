package main

import (
	"errors"
	"fmt"
	"os"
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
from a cache over SSH; 'doctor' checks that it does.`,
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
		UsageText: "nixcache client join --cache URL --public-key KEY (--host-key LINE | --host-key-fingerprint SHA256:... | --trust-on-first-use) [--max-connections N] [--dry-run] [--no-restart] [--nixos-module FILE]",
		Description: `Sets up this machine's Nix daemon to substitute from the cache at URL
(ssh://USER@HOST[:PORT] or ssh-ng://USER@HOST[:PORT]; USER defaults to nix-ssh),
accepting paths signed by KEY (the cache's public signing key, NAME:BASE64):

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
Lix before 2.93, where an SSH store with more than one connection hangs.

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
     --host-key "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA..." --dry-run`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "cache", Usage: "the cache's `URL`: ssh-ng://USER@HOST[:PORT] or ssh://USER@HOST[:PORT]"},
			&cli.StringFlag{Name: "public-key", Usage: "the cache's public signing `KEY` (NAME:BASE64)"},
			&cli.StringFlag{Name: "host-key", Usage: "the server's ssh host key `LINE` (\"ssh-ed25519 AAAA...\")"},
			&cli.StringFlag{Name: "host-key-fingerprint", Usage: "fetch the host key and check it has this `FINGERPRINT` (SHA256:...)"},
			&cli.BoolFlag{Name: "trust-on-first-use", Usage: "fetch the host key and trust it without a check"},
			&cli.BoolFlag{Name: "dry-run", Usage: "print the changes as diffs; change nothing"},
			&cli.BoolFlag{Name: "no-restart", Usage: "do not restart the daemon; print the command instead"},
			&cli.IntFlag{Name: "max-connections", Value: 1, Usage: "substitute over `N` SSH connections (Nix 2.32+ or Lix 2.93+ only; older versions hang)"},
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
			if len(plan.NixConf) > 0 {
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
	u.MaxConnections = c.Int("max-connections")
	if u.MaxConnections < 1 || u.MaxConnections > 64 {
		return req, errUsage{fmt.Errorf("--max-connections must be between 1 and 64, got %d", u.MaxConnections)}
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
	}
	return req, nil
}

// joinError adds what to do to the ways a join is refused.
func joinError(err error, req onboard.JoinRequest) error {
	var mismatch *onboard.HostKeyMismatch
	var changed *sshconf.HostKeyChanged
	var syntax *nixconf.SyntaxError
	var unsafe *onboard.UnsafeMaxConnections
	var name *onboard.MachineNameError
	switch {
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
			opt := onboard.DoctorOptions{Loc: locations(c), Path: c.String("path"), Machine: machineName(c)}
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
