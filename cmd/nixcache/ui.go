package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/onboard"
	"github.com/nixcache/nixcache/internal/push"
	"github.com/nixcache/nixcache/internal/signing"
	"github.com/nixcache/nixcache/internal/sshconf"
)

// ui is the one place that writes to the terminal. Messages are lowercase,
// prefixed with the program name, and followed by hints saying what to do.
// Nothing here ever prints key material: errors from key parsing describe
// the problem without quoting the input.
type ui struct {
	stdout, stderr io.Writer
}

func newUI(stdout, stderr io.Writer) *ui { return &ui{stdout: stdout, stderr: stderr} }

func (u *ui) warnf(format string, args ...any) {
	fmt.Fprintf(u.stderr, "nixcache: warning: "+format+"\n", args...)
}

func (u *ui) hint(format string, args ...any) {
	fmt.Fprintf(u.stderr, "nixcache: hint: "+format+"\n", args...)
}

func (u *ui) json(v any) error {
	enc := json.NewEncoder(u.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// hinted is an error that comes with advice.
type hinted struct {
	err   error
	hints []string
}

func (h hinted) Error() string { return h.err.Error() }
func (h hinted) Unwrap() error { return h.err }

func withHint(err error, hints ...string) error { return hinted{err, hints} }

// errFailed is returned after a command has already said what went wrong
// (verify listing bad paths): exit 1 with no further message.
var errFailed = errors.New("failed")

// exit prints err with its hints and returns the process exit status.
func (u *ui) exit(err error) int {
	if err == nil {
		return 0
	}
	if errors.Is(err, errFailed) {
		return 1
	}
	fmt.Fprintf(u.stderr, "nixcache: %s\n", printable(err.Error()))
	// Hints attached deeper in the chain are the more specific: print them
	// first.
	var layers [][]string
	for e := err; e != nil; e = errors.Unwrap(e) {
		if h, ok := e.(hinted); ok {
			layers = append(layers, h.hints)
		}
	}
	for i := len(layers) - 1; i >= 0; i-- {
		for _, s := range layers[i] {
			u.hint("%s", s)
		}
	}
	for _, s := range hintsFor(err) {
		u.hint("%s", s)
	}
	if isUsage(err) {
		return 2
	}
	return 1
}

// hintsFor gives advice for errors that come from below the CLI.
func hintsFor(err error) []string {
	var dial *daemon.DialError
	switch {
	case errors.As(err, &dial):
		switch {
		case errors.Is(dial.Err, fs.ErrNotExist), errors.Is(dial.Err, syscall.ECONNREFUSED):
			return []string{
				"is the Nix daemon running? start it with 'systemctl start nix-daemon' (macOS: 'sudo launchctl kickstart -k system/org.nixos.nix-daemon')",
				"or point NIX_DAEMON_SOCKET_PATH at the daemon's socket",
			}
		case errors.Is(dial.Err, fs.ErrPermission):
			return []string{"run as root, or add this user to the group that owns the daemon socket (nix-users on Debian)"}
		}
	case errors.Is(err, signing.ErrNotTrusted):
		return []string{"run as root, or add this user to trusted-users in nix.conf and restart the daemon"}
	}
	return nil
}

// progress shows a counter on the terminal for long runs and nothing when
// standard error is a pipe or a file.
type progress struct {
	w     io.Writer
	label string
	mu    sync.Mutex
	last  time.Time
	shown bool
}

func (u *ui) progress(label string) *progress {
	f, ok := u.stderr.(*os.File)
	if !ok {
		return nil
	}
	st, err := f.Stat()
	if err != nil || st.Mode()&fs.ModeCharDevice == 0 {
		return nil
	}
	return &progress{w: u.stderr, label: label, last: time.Now()}
}

// update is safe to call from several goroutines; a nil progress is silent.
func (p *progress) update(done, total int) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := time.Now(); now.Sub(p.last) >= 200*time.Millisecond || done == total {
		p.last = now
		p.shown = true
		fmt.Fprintf(p.w, "\rnixcache: %s %d/%d", p.label, done, total)
	}
}

// show prints text as the counter line, for counters that are more than
// done/total (push's paths and MiB); like update, at most five times a
// second unless final, and safe from several goroutines.
func (p *progress) show(text string, final bool) {
	if p == nil {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if now := time.Now(); now.Sub(p.last) >= 200*time.Millisecond || final {
		p.last = now
		p.shown = true
		fmt.Fprintf(p.w, "\r\033[Knixcache: %s", text)
	}
}

// pushed reports a push: each path not pushed and why, on standard error,
// then the counts.
func (u *ui) pushed(res push.Result) {
	for _, f := range res.Failed {
		fmt.Fprintf(u.stderr, "nixcache: not pushed: %s: %s\n", f.Path, printable(f.Error))
	}
	fmt.Fprintf(u.stdout, "pushed %d (%.1f MiB in %.1f s), already in the cache %d, failed %d\n",
		len(res.Pushed), float64(res.Bytes)/(1<<20), res.Seconds, len(res.Skipped), len(res.Failed))
}

// clear removes the counter line before the final output.
func (p *progress) clear() {
	if p == nil || !p.shown {
		return
	}
	fmt.Fprint(p.w, "\r\033[K")
}

// notef says something that is neither output nor a problem, on standard
// error.
func (u *ui) notef(format string, args ...any) {
	fmt.Fprintf(u.stderr, "nixcache: "+format+"\n", args...)
}

// table prints rows in columns two spaces apart, the first row a header.
// Widths count runes, as fmt's padding does.
func (u *ui) table(rows [][]string) {
	var widths []int
	for _, row := range rows {
		for i, cell := range row {
			if i == len(widths) {
				widths = append(widths, 0)
			}
			widths[i] = max(widths[i], len([]rune(cell)))
		}
	}
	for _, row := range rows {
		line := ""
		for i, cell := range row {
			if i < len(row)-1 {
				line += fmt.Sprintf("%-*s  ", widths[i], cell)
			} else {
				line += cell
			}
		}
		for len(line) > 0 && line[len(line)-1] == ' ' {
			line = line[:len(line)-1]
		}
		fmt.Fprintln(u.stdout, line)
	}
}

// Output of client join and client doctor.

// readOnly refuses to edit a generated nix.conf and prints the client
// module's configuration instead, or says where it was written.
func (u *ui) readOnly(err error, module, writtenTo string) error {
	if writtenTo != "" {
		fmt.Fprintf(u.stderr, "nixcache: %v\nnixcache: wrote the client module's configuration to %q: import it and rebuild (nixos-rebuild switch)\n", err, writtenTo)
		return nil
	}
	fmt.Fprint(u.stdout, module)
	return withHint(err, "nothing was changed",
		"add the configuration printed above to your system configuration and rebuild (or pass --nixos-module FILE)")
}

func (u *ui) dryRun(plan *onboard.Plan) {
	fmt.Fprintf(u.stderr, "nixcache: dry run: nothing is changed\n")
	if plan.CreateKey {
		fmt.Fprintf(u.stdout, "would create the daemon's ssh key %q (ed25519, mode 0600)\n", plan.Req.Loc.SSHDir.KeyFile())
	}
	for _, f := range plan.SSHFiles {
		fmt.Fprint(u.stdout, f.Diff())
	}
	for _, f := range plan.Units {
		fmt.Fprint(u.stdout, f.Diff())
	}
	for _, ch := range plan.NixConf {
		fmt.Fprint(u.stdout, ch.Diff())
	}
	for _, step := range plan.ServiceSteps {
		fmt.Fprintf(u.stdout, "would run %s\n", onboard.ShellCommand(step))
	}
	if plan.Req.Cache.Channel() && !plan.Req.Service.Systemd {
		fmt.Fprintf(u.stdout, "would need this kept running as root, started before the daemon uses the cache:\n    %s\n", onboard.ShellCommand(plan.Substituter))
	}
	if len(plan.NixConf) > 0 {
		fmt.Fprintln(u.stdout, "would restart the Nix daemon")
	}
	if !plan.Changed() {
		fmt.Fprintln(u.stdout, "nothing to change")
	}
}

func (u *ui) joinUnchanged(plan *onboard.Plan) {
	fmt.Fprintf(u.stderr, "nixcache: nothing to change: this machine already substitutes from %s\n", plan.Cache.URL)
	if plan.Req.Cache.Channel() && !plan.Req.Service.Systemd {
		u.keepRunning(plan)
	}
	u.forAdmin(plan, plan.Req.Machine)
}

func (u *ui) joined(plan *onboard.Plan, res *onboard.Result) {
	if plan.CreateKey {
		fmt.Fprintf(u.stderr, "nixcache: created the daemon's ssh key %q\n", plan.Req.Loc.SSHDir.KeyFile())
	}
	fmt.Fprintf(u.stderr, "nixcache: pinned host key %s for %s\n", sshconf.Fingerprint(plan.HostKey), plan.Req.Cache.Target.KnownHostsName())
	for _, w := range res.Written {
		if w != plan.Req.Loc.SSHDir.KeyFile() && w != plan.Req.Loc.SSHDir.KeyFile()+".pub" {
			fmt.Fprintf(u.stderr, "nixcache: wrote %q\n", w)
		}
	}
	for _, b := range res.Backups {
		fmt.Fprintf(u.stderr, "nixcache: backup in %q\n", b)
	}
}

// keepRunning gives the command that serves a nixcache:// cache to Nix,
// for an admin who runs it without join's systemd unit. The command is
// alone on its line, indented, to be copied or read by a script.
func (u *ui) keepRunning(plan *onboard.Plan) {
	fmt.Fprintf(u.stderr, "nixcache: no service installed: keep this running as root (a service of your own), started before the daemon uses the new nix.conf:\n")
	fmt.Fprintf(u.stderr, "    %s\n", onboard.ShellCommand(plan.Substituter))
	u.hint("while nix.conf names %s and nothing answers there, Nix 2.8 aborts builds that look for substitutes", plan.Req.Cache.NixSubstituter())
}

func (u *ui) serviceStarted(plan *onboard.Plan) {
	fmt.Fprintf(u.stderr, "nixcache: started %s, enabled at boot (%s)\n", onboard.SubstituterUnit, plan.Req.Cache.NixSubstituter())
}

func (u *ui) serviceFailed(plan *onboard.Plan, err error) {
	u.warnf("starting the substituter failed: %v", err)
	for _, step := range plan.ServiceSteps {
		u.hint("run it yourself: %s", onboard.ShellCommand(step))
	}
	u.hint("then see that it runs: systemctl status %s %s", onboard.SubstituterSocket, onboard.SubstituterUnit)
}

func (u *ui) restarted(cmd string) {
	fmt.Fprintf(u.stderr, "nixcache: restarted the Nix daemon (%s)\n", cmd)
}

func (u *ui) restartLater(what string) {
	fmt.Fprintf(u.stderr, "nixcache: not restarting the daemon; until it restarts it ignores the new nix.conf\n")
	u.hint("%s", what)
}

func (u *ui) noServiceManager(err error) {
	u.warnf("%v: the daemon was not restarted and ignores the new nix.conf until it is", err)
	u.hint("restart nix-daemon the way it is started on this machine (stop the running one, start 'nix-daemon' as root)")
}

// otherIdentities warns that root's own IdentityFile lines apply to the
// cache too: ssh offers those keys when the daemon's is refused, and no
// setting in the managed block can stop it.
func (u *ui) otherIdentities(config string, files []string) {
	u.warnf("root's ssh configuration (%q) also gives the cache account these keys: %s", config, strings.Join(files, ", "))
	u.hint("ssh offers them to the cache whenever it refuses this machine's key, which shows the cache their public halves")
	u.hint("move those IdentityFile lines into Host blocks for the hosts that need them")
}

// forAdmin prints what the cache's admin needs: the daemon's public key,
// as a ready command.
func (u *ui) forAdmin(plan *onboard.Plan, machine string) {
	if plan.ClientKey == nil {
		return
	}
	fmt.Fprintf(u.stderr, "nixcache: give the cache's admin this machine's key; on the server:\n")
	fmt.Fprintln(u.stdout, onboard.AdminCommand(machine, plan.ClientKey))
}

func (u *ui) checks(checks []onboard.Check) {
	cache := ""
	for _, c := range checks {
		if c.Cache != cache {
			cache = c.Cache
			fmt.Fprintf(u.stdout, "%s\n", cache)
		}
		mark := map[onboard.Status]string{onboard.OK: "✓", onboard.Failed: "✗", onboard.Skipped: "-", onboard.Warning: "!"}[c.Status]
		indent := ""
		if c.Cache != "" {
			indent = "  "
		}
		fmt.Fprintf(u.stdout, "%s%s %s: %s\n", indent, mark, c.Name, printable(c.Detail))
		for _, h := range c.Hints {
			fmt.Fprintf(u.stdout, "%s    hint: %s\n", indent, printable(h))
		}
	}
}

// printable shows control characters in text as Go escapes. Errors and
// checks carry what a cache, its daemon or ssh said, and a hostile cache
// must not reach the admin's terminal with escape sequences (a retitled
// window, a cleared screen, a rewritten line).
func printable(text string) string {
	var b strings.Builder
	for _, r := range text {
		if r != '\n' && r != '\t' && (unicode.IsControl(r) || r == utf8.RuneError) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}
