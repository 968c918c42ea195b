// Package onboard joins a client machine to a cache and diagnoses it: it
// plans every change (nix.conf, root's ssh files, the daemon's key) before
// making any, so that a refusal or a dry run leaves the machine as it was.
package onboard

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/rogpeppe/go-internal/diff"
	"golang.org/x/crypto/ssh"

	"github.com/nixcache/nixcache/internal/atomicfile"
	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/nixconf"
	"github.com/nixcache/nixcache/internal/nixkey"
	"github.com/nixcache/nixcache/internal/registry"
	"github.com/nixcache/nixcache/internal/service"
	"github.com/nixcache/nixcache/internal/sshconf"
)

// Locations are where join and doctor look; the defaults are the real ones,
// and tests point them elsewhere.
type Locations struct {
	NixConfDir string      // default $NIX_CONF_DIR, else /etc/nix
	SSHDir     sshconf.Dir // default root's ~/.ssh
	Socket     string      // the daemon's socket
}

// DefaultNixConfDir is where Nix reads nix.conf, as Nix decides it.
func DefaultNixConfDir() string {
	if d := os.Getenv("NIX_CONF_DIR"); d != "" {
		return d
	}
	return "/etc/nix"
}

// HostKeySource is how join learns the cache's host key; exactly one field
// is set.
type HostKeySource struct {
	Line        string // the key itself
	Fingerprint string // "SHA256:...", checked against what the server presents
	TOFU        bool   // whatever the server presents, on explicit request
}

// JoinRequest is what `nixcache client join` was asked.
type JoinRequest struct {
	Cache     sshconf.URL
	PublicKey nixkey.PublicKey
	HostKey   HostKeySource
	// Machine names this machine in the cache's registry and in the key's
	// comment; it must be a name the registry takes.
	Machine string
	Loc     Locations
	// ServerMaxSessions is the cache's sshd MaxSessions, when its admin
	// raised it; 0 stands for OpenSSH's default.
	ServerMaxSessions int
	// Service is how the substituter of a nixcache:// cache keeps running.
	Service ServiceSetup
}

// FileChange is a planned write of one file.
type FileChange struct {
	Path     string
	Old, New []byte
	Exists   bool
	Mode     fs.FileMode
	// Backup asks for a copy of the old file before it is replaced: for
	// files that are not nixcache's own.
	Backup bool
}

// Diff is the change as a unified diff.
func (f FileChange) Diff() string {
	old := "/dev/null"
	if f.Exists {
		old = f.Path
	}
	return string(diff.Diff(old, f.Old, f.Path, f.New))
}

// Plan is everything join will do.
type Plan struct {
	Req       JoinRequest
	Cache     sshconf.Cache
	Config    *nixconf.Config
	HostKey   ssh.PublicKey
	Presented []ssh.PublicKey // what the server presented, if it was asked
	// CreateKey says the daemon's ssh key does not exist yet; ClientKey is
	// its public half once it does.
	CreateKey bool
	ClientKey ssh.PublicKey
	SSHFiles  []FileChange
	NixConf   []nixconf.Change
	// HostKeyUnchecked is set when the server could not be reached to
	// confirm a host key given as a line.
	HostKeyUnchecked error
	// Substituter is, for a nixcache:// cache, the command that must keep
	// running for Nix to substitute from it.
	Substituter []string
	// Units are the substituter's systemd units that change (the socket,
	// then the service), and ServiceSteps the systemctl commands that then
	// load and start them.
	Units        []FileChange
	ServiceSteps [][]string
}

// Changed reports whether applying the plan would change anything.
func (p *Plan) Changed() bool {
	return p.CreateKey || len(p.SSHFiles) > 0 || len(p.NixConf) > 0 || len(p.Units) > 0
}

// PlanJoin works out every change join makes, touching nothing. It fails
// before any change on a host key that does not match, on a nix.conf it
// cannot parse or edit, and on an unusable existing key.
func PlanJoin(ctx context.Context, req JoinRequest) (*Plan, error) {
	if err := registry.ValidateName(req.Machine); err != nil {
		return nil, &MachineNameError{err}
	}
	if err := checkSessions(req); err != nil {
		return nil, err
	}
	p := &Plan{Req: req}
	loc := req.Loc
	var err error
	if p.Config, err = nixconf.Load(loc.NixConfDir); err != nil {
		return nil, err
	}
	if err := p.resolveHostKey(ctx); err != nil {
		return nil, err
	}
	p.Cache = sshconf.Cache{URL: req.Cache.Substituter(), Target: req.Cache.Target, PublicKey: req.PublicKey.String()}

	// nix.conf first: a read-only one (NixOS, nix-darwin) stops here, with
	// the host key known for the module snippet.
	ver, verErr := daemonVersion(ctx, loc.Socket)
	if n := req.Cache.MaxConnections; n > 1 {
		if verErr != nil {
			return nil, fmt.Errorf("--max-connections %d needs the daemon's Nix version, and the daemon cannot be asked: %w", n, verErr)
		}
		if err := sshconf.MaxConnectionsSafe(ver.nix); err != nil {
			return nil, &UnsafeMaxConnections{err}
		}
	}
	opt := nixconf.EditOptions{
		// Determinate Nix (nix.custom.conf) is always recent; otherwise a
		// daemon that cannot be asked gets the full list every Nix reads.
		GenericExtra: filepath.Base(p.Config.Target()) == "nix.custom.conf" || verErr == nil && ver.genericExtra(),
		Comment:      "added by nixcache client join for " + p.Cache.URL,
		// Nix fails a build when a substituter cannot be reached unless
		// fallback is on: a cache that is down must not stop all work.
		Defaults: map[string]string{"fallback": "true"},
	}
	p.NixConf, err = p.Config.Add(map[string][]string{
		"substituters":        {req.Cache.NixSubstituter()},
		"trusted-public-keys": {p.Cache.PublicKey},
	}, opt)
	if err != nil {
		return p, err
	}

	dir := loc.SSHDir
	p.ClientKey, err = sshconf.ReadKey(dir.KeyFile())
	switch {
	case sshconf.IsNotExist(err):
		p.CreateKey = true
	case err != nil:
		return nil, err
	}

	known, err := readFile(dir.KnownHosts())
	if err != nil {
		return nil, err
	}
	p.addSSHFile(dir.KnownHosts(), known, sshconf.Pin(known.data, req.Cache.Target, p.HostKey), 0o644, false)
	managed, err := readFile(dir.Managed())
	if err != nil {
		return nil, err
	}
	caches, err := dir.ReadManaged()
	if err != nil {
		return nil, err
	}
	rendered, err := dir.RenderManaged(sshconf.WithCache(caches, p.Cache))
	if err != nil {
		return nil, err
	}
	p.addSSHFile(dir.Managed(), managed, rendered, 0o644, false)
	user, err := readFile(dir.UserConfig())
	if err != nil {
		return nil, err
	}
	p.addSSHFile(dir.UserConfig(), user, dir.EnsureInclude(user.data), 0o600, true)
	if req.Cache.Channel() {
		if err := p.planService(); err != nil {
			return nil, err
		}
	}
	return p, nil
}

// checkSessions refuses more connections than the cache's sshd takes: Nix
// runs its connections to an ssh store as sessions of one SSH master
// connection, and sshd refuses the sessions past MaxSessions, which Nix
// reports as "protocol mismatch". A nixcache:// cache has no Nix
// connections: its substituter's channels replace them.
func checkSessions(req JoinRequest) error {
	n := req.Cache.MaxConnections
	if req.Cache.Channel() {
		if n > 1 {
			return &ChannelMaxConnections{}
		}
		return nil
	}
	limit := req.ServerMaxSessions
	if limit == 0 {
		limit = sshconf.DefaultMaxSessions
	}
	if n > limit {
		return &TooManySessions{Connections: n, MaxSessions: limit, Default: req.ServerMaxSessions == 0}
	}
	return nil
}

// TooManySessions refuses more connections than the cache's sshd allows
// sessions on one SSH connection.
type TooManySessions struct {
	Connections, MaxSessions int
	// Default says MaxSessions is OpenSSH's default, not what the cache's
	// admin said.
	Default bool
}

func (e *TooManySessions) Error() string {
	limit := fmt.Sprintf("sshd's default MaxSessions (%d)", e.MaxSessions)
	if !e.Default {
		limit = fmt.Sprintf("the cache's MaxSessions (--server-max-sessions %d)", e.MaxSessions)
	}
	return fmt.Sprintf("--max-connections %d is more than %s: Nix opens its connections as sessions of one SSH connection, and sshd refuses the ones past MaxSessions (Nix says \"protocol mismatch\")",
		e.Connections, limit)
}

// ChannelMaxConnections refuses max-connections for nixcache://, which
// Nix does not reach over ssh.
type ChannelMaxConnections struct{}

func (e *ChannelMaxConnections) Error() string {
	return "--max-connections is for Nix's ssh stores; a nixcache:// cache is reached through the local substituter, whose requests in flight are its --channels"
}

// planService works out the command that serves a nixcache:// cache to
// Nix, and with systemd the unit that keeps it running and the commands
// that start it.
func (p *Plan) planService() error {
	svc := p.Req.Service
	if !filepath.IsAbs(svc.Executable) {
		return fmt.Errorf("the substituter's program %q is not an absolute path", svc.Executable)
	}
	dir, err := filepath.Abs(string(p.Req.Loc.SSHDir))
	if err != nil {
		return err
	}
	p.Substituter = SubstituterArgv(svc.Executable, p.Req.Cache.Target, p.Req.Cache.SubstituterPort, sshconf.Dir(dir), p.Req.ServerMaxSessions)
	if !svc.Systemd {
		return nil
	}
	service, err := RenderUnit(p.Substituter)
	if err != nil {
		return err
	}
	existed := false
	for _, u := range []struct {
		name string
		data []byte
	}{{SubstituterSocket, RenderSocket(p.Req.Cache.SubstituterPort)}, {SubstituterUnit, service}} {
		path := filepath.Join(svc.UnitDir, u.name)
		old, err := readFile(path)
		if err != nil {
			return err
		}
		existed = existed || old.exists
		if !old.exists || string(old.data) != string(u.data) {
			p.Units = append(p.Units, FileChange{Path: path, Old: old.data, New: u.data, Exists: old.exists, Mode: 0o644})
		}
	}
	if len(p.Units) == 0 {
		return nil
	}
	// Loaded, enabled for every boot, and running before the daemon is
	// restarted to use it; changed units are restarted to take effect,
	// the socket and the service in one transaction.
	units := []string{SubstituterSocket, SubstituterUnit}
	p.ServiceSteps = [][]string{{"systemctl", "daemon-reload"}}
	if existed {
		p.ServiceSteps = append(p.ServiceSteps, append([]string{"systemctl", "enable"}, units...), append([]string{"systemctl", "restart"}, units...))
	} else {
		p.ServiceSteps = append(p.ServiceSteps, append([]string{"systemctl", "enable", "--now"}, units...))
	}
	return nil
}

// StartService runs the steps that load and start the substituter's unit,
// stopping at the first that fails.
func (p *Plan) StartService() error {
	for _, step := range p.ServiceSteps {
		if err := service.Run(step); err != nil {
			return err
		}
	}
	return nil
}

type fileState struct {
	data   []byte
	exists bool
	mode   fs.FileMode
}

func readFile(path string) (fileState, error) {
	st, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return fileState{}, nil
	}
	if err != nil {
		return fileState{}, err
	}
	data, err := os.ReadFile(path)
	return fileState{data, true, st.Mode().Perm()}, err
}

func (p *Plan) addSSHFile(path string, old fileState, data []byte, mode fs.FileMode, backup bool) {
	if old.exists && string(old.data) == string(data) {
		return
	}
	if old.exists {
		mode = old.mode
	}
	p.SSHFiles = append(p.SSHFiles, FileChange{Path: path, Old: old.data, New: data, Exists: old.exists, Mode: mode, Backup: backup && old.exists})
}

// version is what the daemon says of itself in the handshake.
type version struct {
	protocol daemon.Version
	nix      string // from protocol 1.33 (Nix 2.5) on
}

// genericExtra says whether this Nix understands `extra-NAME` for every
// setting: Nix 2.4 (protocol 1.32) and later.
func (v version) genericExtra() bool { return v.protocol.Minor() >= 32 }

func daemonVersion(ctx context.Context, socket string) (version, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	c, err := daemon.Dial(ctx, socket)
	if err != nil {
		return version{}, err
	}
	defer c.Close()
	return version{c.DaemonVersion, c.DaemonNixVersion}, nil
}

// MachineNameError refuses a machine name the cache's registry would not
// take.
type MachineNameError struct{ Err error }

func (e *MachineNameError) Error() string { return "this machine's name: " + e.Err.Error() }

func keyComment(machine string) string { return "nixcache@" + machine }

// AdminCommand is the command the cache's admin pastes into a shell to
// register key for machine. Nothing read from this machine's files goes
// into it: the key is its type and base64 only, the comment is made from
// the name, and both arguments are quoted for the shell.
func AdminCommand(machine string, key ssh.PublicKey) string {
	return "nixcache clients add " + shellQuote(machine) + " --key " + shellQuote(sshconf.AuthorizedLine(key, keyComment(machine)))
}

// shellQuote makes s one word for a POSIX shell: inside single quotes
// nothing is special but the single quote itself, which is closed, escaped
// and reopened.
func shellQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

// UnsafeMaxConnections refuses max-connections > 1 on a Nix that hangs
// with it.
type UnsafeMaxConnections struct{ Err error }

func (e *UnsafeMaxConnections) Error() string { return e.Err.Error() }

// HostKeyMismatch says the server's key is not the one join was told to
// expect.
type HostKeyMismatch struct {
	Target    sshconf.Target
	Want      string // a fingerprint
	Presented []ssh.PublicKey
}

func (e *HostKeyMismatch) Error() string {
	var fps []string
	for _, k := range e.Presented {
		fps = append(fps, sshconf.Fingerprint(k))
	}
	return fmt.Sprintf("%s presents host key %s, not %s", e.Target.Addr(), strings.Join(fps, ", "), e.Want)
}

// resolveHostKey settles the key to pin. A key pinned earlier must match
// both what the user gave and what the server presents: a change is never
// accepted silently.
func (p *Plan) resolveHostKey(ctx context.Context) error {
	t := p.Req.Cache.Target
	pinned, err := sshconf.Pinned(p.Req.Loc.SSHDir.KnownHosts(), t)
	if err != nil {
		return err
	}
	src := p.Req.HostKey
	fetch := func() error {
		keys, err := sshconf.FetchHostKeys(ctx, t.Addr())
		if err != nil {
			return fmt.Errorf("cannot get the host key of %s: %w", t.Addr(), err)
		}
		p.Presented = keys
		return nil
	}
	switch {
	case src.Line != "":
		k, err := sshconf.ParseHostKey(src.Line)
		if err != nil {
			return err
		}
		p.HostKey = k
		err = sshconf.CheckPinned(ctx, t, k)
		var changed *sshconf.HostKeyChanged
		switch {
		case errors.As(err, &changed):
			p.Presented = changed.Presented
			return &HostKeyMismatch{t, sshconf.Fingerprint(k), p.Presented}
		case err != nil:
			// The key was given: a cache that is down now may still be
			// joined, and ssh checks the pin on first use.
			p.HostKeyUnchecked = err
		default:
			p.Presented = []ssh.PublicKey{k}
		}
	case src.Fingerprint != "":
		if err := fetch(); err != nil {
			return err
		}
		i := slices.IndexFunc(p.Presented, func(k ssh.PublicKey) bool { return sshconf.Fingerprint(k) == src.Fingerprint })
		if i < 0 {
			return &HostKeyMismatch{t, src.Fingerprint, p.Presented}
		}
		p.HostKey = p.Presented[i]
	case src.TOFU:
		if err := fetch(); err != nil {
			return err
		}
		p.HostKey = p.Presented[0]
		if pinned != nil {
			if i := slices.IndexFunc(p.Presented, func(k ssh.PublicKey) bool { return sshconf.SameKey(k, pinned) }); i >= 0 {
				p.HostKey = p.Presented[i]
			}
		}
	default:
		return errors.New("no host key source given")
	}
	if pinned != nil && !sshconf.SameKey(pinned, p.HostKey) {
		return &sshconf.HostKeyChanged{Target: t, Pinned: pinned, Presented: []ssh.PublicKey{p.HostKey}}
	}
	return nil
}

// Result is what Apply did.
type Result struct {
	Written []string // files written, in order
	Backups []string
}

// Apply makes the planned changes: the key first (created exclusively),
// then ssh's files, then the substituter's unit, then nix.conf, each
// written atomically.
func (p *Plan) Apply(now time.Time) (*Result, error) {
	res := &Result{}
	dir := p.Req.Loc.SSHDir
	if err := os.MkdirAll(string(dir), 0o700); err != nil {
		return res, err
	}
	if p.CreateKey {
		k, err := sshconf.GenerateKey(dir.KeyFile(), keyComment(p.Req.Machine))
		if err != nil {
			return res, err
		}
		p.ClientKey = k
		res.Written = append(res.Written, dir.KeyFile(), dir.KeyFile()+".pub")
	}
	for _, f := range p.SSHFiles {
		var was fs.FileInfo
		if f.Exists {
			var err error
			if was, err = os.Stat(f.Path); err != nil {
				return res, err
			}
		}
		if f.Backup {
			b, err := atomicfile.Backup(f.Path, f.Old, was, now)
			if err != nil {
				return res, err
			}
			res.Backups = append(res.Backups, b)
		}
		if err := atomicfile.Write(f.Path, f.New, f.Mode); err != nil {
			return res, err
		}
		if err := atomicfile.KeepOwner(f.Path, was); err != nil {
			return res, err
		}
		res.Written = append(res.Written, f.Path)
	}
	for _, u := range p.Units {
		if err := os.MkdirAll(filepath.Dir(u.Path), 0o755); err != nil {
			return res, err
		}
		if err := atomicfile.Write(u.Path, u.New, u.Mode); err != nil {
			return res, err
		}
		res.Written = append(res.Written, u.Path)
	}
	backups, err := nixconf.Apply(p.NixConf, now)
	res.Backups = append(res.Backups, backups...)
	if err != nil {
		return res, err
	}
	for _, c := range p.NixConf {
		res.Written = append(res.Written, c.Path)
	}
	return res, nil
}
