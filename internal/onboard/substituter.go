package onboard

import (
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/nixcache/nixcache/internal/sshconf"
	"github.com/nixcache/nixcache/internal/substituter"
)

// DefaultSubstituterPort is the loopback port the substituter of a
// nixcache:// cache listens on unless join is told otherwise; the NixOS
// client module's default too.
const DefaultSubstituterPort = 37515

// SubstituterUnit is the systemd unit that runs the substituter, and
// SubstituterSocket the one that holds its port; the NixOS client
// module's have the same names.
const (
	SubstituterUnit   = "nixcache-substituter.service"
	SubstituterSocket = "nixcache-substituter.socket"
)

// DefaultUnitDir is where the admin's own systemd units live.
const DefaultUnitDir = "/etc/systemd/system"

// ServiceSetup is how join keeps the substituter of a nixcache:// cache
// running.
type ServiceSetup struct {
	// Systemd installs and starts SubstituterUnit in UnitDir; otherwise
	// join only says what to keep running.
	Systemd bool
	UnitDir string
	// Executable is the absolute path of the nixcache the service runs.
	Executable string
}

// SubstituterArgv is the command that serves the cache to Nix on
// 127.0.0.1:port, reading join's files in dir. Everything is given, the
// cache's port included, so that it never needs the managed ssh file.
func SubstituterArgv(exe string, t sshconf.Target, port int, dir sshconf.Dir, maxSessions int) []string {
	argv := []string{exe, "client", "substituter",
		"--cache", fmt.Sprintf("ssh://%s@%s:%d", t.User, t.Host, t.Port),
		"--listen", "127.0.0.1:" + strconv.Itoa(port),
		"--ssh-dir", string(dir)}
	if maxSessions > 0 {
		// The substituter's channels are sessions too: it must open no
		// more than the server takes.
		argv = append(argv, "--server-max-sessions", strconv.Itoa(maxSessions))
		if maxSessions < substituter.DefaultChannels {
			argv = append(argv, "--channels", strconv.Itoa(maxSessions))
		}
	}
	return argv
}

// ShellCommand is argv as a line for a POSIX shell, each word quoted when
// it needs it.
func ShellCommand(argv []string) string {
	words := make([]string, len(argv))
	for i, w := range argv {
		words[i] = w
		if w == "" || strings.ContainsFunc(w, func(r rune) bool { return !plainWord(r) }) {
			words[i] = shellQuote(w)
		}
	}
	return strings.Join(words, " ")
}

func plainWord(r rune) bool {
	return r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("_-./:@=+,", r)
}

// RenderUnit is the systemd unit that keeps argv running as root. It
// refuses a word systemd would not read back as it is.
//
// The unit runs as root because the substituter uses the daemon's key in
// root's ssh directory, as Nix's own ssh would; the hardening keeps what
// it can do to reading files, writing its spool in a private /tmp and
// talking TCP. Root keeps only the right to read files it owns (no
// capabilities): the key, mode 0600, is root's.
func RenderUnit(argv []string) ([]byte, error) {
	words := make([]string, len(argv))
	for i, w := range argv {
		q, err := unitWord(w)
		if err != nil {
			return nil, err
		}
		words[i] = q
	}
	if !filepath.IsAbs(argv[0]) {
		return nil, fmt.Errorf("the service's program %q is not an absolute path", argv[0])
	}
	return []byte(`# Installed by 'nixcache client join': rewritten by every join, do not edit.
[Unit]
Description=Serve the nixcache server to the local Nix over one SSH connection
Documentation=https://github.com/nixcache/nixcache/blob/main/docs/client.md
Wants=network-online.target
After=network-online.target
# nix.conf names the substituter: the daemon must find it answering, as
# Nix 2.8 aborts builds on a substituter that refuses connections
# (NixOS/nix#6445).
Before=nix-daemon.service
# Never give up restarting, for the same reason.
StartLimitIntervalSec=0
# The port comes from the socket unit.
Requires=` + SubstituterSocket + `
After=` + SubstituterSocket + `

[Service]
ExecStart=` + strings.Join(words, " ") + `
Restart=always
RestartSec=1

# Identity: root, for the daemon's key in root's ssh directory, without
# any capability: reading files root owns needs none.
CapabilityBoundingSet=
AmbientCapabilities=
NoNewPrivileges=yes
# Filesystem: everything read-only, homes included (root's ssh directory
# stays readable); the NAR spool lives in a private /tmp.
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
UMask=0077
# Network: TCP to the cache and the loopback listener; AF_UNIX for name
# lookups through nss.
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
# Kernel and process isolation.
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
# The Go runtime raises its open-file limit at start; let that fail
# quietly instead of killing the process.
SystemCallErrorNumber=EPERM

[Install]
WantedBy=multi-user.target
`), nil
}

// RenderSocket is the socket unit that holds the substituter's port from
// boot on and across its restarts: the port is not privileged, and a local
// user who bound it while the substituter was down would see every path
// Nix asks for and could answer in its place (with nothing Nix accepts:
// signatures decide that, but with refusals that abort builds).
func RenderSocket(port int) []byte {
	return []byte(`# Installed by 'nixcache client join': rewritten by every join, do not edit.
[Unit]
Description=The nixcache substituter's port

[Socket]
ListenStream=127.0.0.1:` + strconv.Itoa(port) + `

[Install]
WantedBy=sockets.target
`)
}

// unitWord quotes w as one word of ExecStart: systemd reads "%" as a
// specifier and "$" as a variable, and takes C escapes inside quotes. A
// control character has no safe spelling there.
func unitWord(w string) (string, error) {
	if strings.ContainsFunc(w, func(r rune) bool { return r < ' ' || r == 0x7f }) {
		return "", errors.New("a word of the service's command holds a control character; systemd cannot take it")
	}
	w = strings.NewReplacer("%", "%%", "$", "$$").Replace(w)
	if w != "" && !strings.ContainsFunc(w, func(r rune) bool { return !plainWord(r) && r != '%' && r != '$' }) {
		return w, nil
	}
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`).Replace(w) + `"`, nil
}
