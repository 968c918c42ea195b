package onboard

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nixcache/nixcache/internal/nixkey"
	"github.com/nixcache/nixcache/internal/sshconf"
)

// A host key nobody serves: join's planner takes a key given as a line
// even when the server cannot be reached.
const testHostKey = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFZZwjpX6h2UfYxf2s1otG+HZeYNJkdH2t6aX6qjCgor"

// channelRequest joins a nixcache:// cache on a port nothing listens on,
// with every file in a fresh directory and systemd's units in units.
func channelRequest(t *testing.T, port int) JoinRequest {
	t.Helper()
	dir := t.TempDir()
	u, err := sshconf.ParseURL("nixcache://nix-ssh@127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	u.SubstituterPort = port
	pk, err := nixkey.ParsePublicKey("cache-1:5EzbGvN5d0RQ6/tGW8DbqtSrzvzC1thk8BK5zQEmCcg=")
	if err != nil {
		t.Fatal(err)
	}
	return JoinRequest{
		Cache: u, PublicKey: pk, HostKey: HostKeySource{Line: testHostKey}, Machine: "laptop",
		Loc:     Locations{NixConfDir: filepath.Join(dir, "nix"), SSHDir: sshconf.Dir(filepath.Join(dir, "ssh")), Socket: filepath.Join(dir, "no-daemon")},
		Service: ServiceSetup{Systemd: true, UnitDir: filepath.Join(dir, "units"), Executable: "/usr/local/bin/nixcache"},
	}
}

// nixcache:// gives nix.conf the local substituter, installs a unit that
// runs it with join's files and starts it; joining again changes nothing,
// and another port rewrites the unit and restarts the service.
func TestPlanJoinChannel(t *testing.T) {
	req := channelRequest(t, 37515)
	p, err := PlanJoin(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if p.Cache.URL != "nixcache://nix-ssh@127.0.0.1?substituter-port=37515" {
		t.Errorf("recorded the cache as %q", p.Cache.URL)
	}
	var conf string
	for _, ch := range p.NixConf {
		conf += string(ch.New)
	}
	if !strings.Contains(conf, "\nsubstituters = https://cache.nixos.org/ http://127.0.0.1:37515\n") {
		t.Errorf("nix.conf would read:\n%s", conf)
	}
	wantArgv := []string{"/usr/local/bin/nixcache", "client", "substituter", "--cache", "ssh://nix-ssh@127.0.0.1:1",
		"--listen", "127.0.0.1:37515", "--ssh-dir", string(req.Loc.SSHDir)}
	if !slices.Equal(p.Substituter, wantArgv) {
		t.Errorf("the substituter would run as %q, want %q", p.Substituter, wantArgv)
	}
	unitPath := filepath.Join(req.Service.UnitDir, SubstituterUnit)
	socketPath := filepath.Join(req.Service.UnitDir, SubstituterSocket)
	if len(p.Units) != 2 || p.Units[0].Path != socketPath || p.Units[1].Path != unitPath || p.Units[0].Exists || p.Units[1].Exists ||
		!bytes.Contains(p.Units[0].New, []byte("\nListenStream=127.0.0.1:37515\n")) {
		t.Fatalf("planned units %+v", p.Units)
	}
	wantSteps := [][]string{{"systemctl", "daemon-reload"}, {"systemctl", "enable", "--now", SubstituterSocket, SubstituterUnit}}
	if !slices.EqualFunc(p.ServiceSteps, wantSteps, slices.Equal) {
		t.Errorf("steps %q, want %q", p.ServiceSteps, wantSteps)
	}
	res, err := p.Apply(time.Now())
	if err != nil {
		t.Fatal(err)
	}
	// The unit is in place before nix.conf names the substituter.
	if i, j := slices.Index(res.Written, unitPath), slices.Index(res.Written, filepath.Join(req.Loc.NixConfDir, "nix.conf")); i < 0 || j < i {
		t.Errorf("written in the order %q", res.Written)
	}
	if st, err := os.Stat(unitPath); err != nil || st.Mode().Perm() != 0o644 {
		t.Errorf("the unit: %v, %v", st, err)
	}

	again, err := PlanJoin(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if again.Changed() || len(again.Units) > 0 || len(again.ServiceSteps) > 0 {
		t.Errorf("a second join would change %+v", again)
	}

	req.Cache.SubstituterPort = 8080
	moved, err := PlanJoin(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	wantSteps = [][]string{{"systemctl", "daemon-reload"}, {"systemctl", "enable", SubstituterSocket, SubstituterUnit},
		{"systemctl", "restart", SubstituterSocket, SubstituterUnit}}
	if len(moved.Units) != 2 || !moved.Units[0].Exists || !slices.EqualFunc(moved.ServiceSteps, wantSteps, slices.Equal) ||
		!bytes.Contains(moved.Units[0].New, []byte("ListenStream=127.0.0.1:8080\n")) || !bytes.Contains(moved.Units[1].New, []byte("--listen 127.0.0.1:8080 ")) {
		t.Errorf("another port plans units %+v and steps %q", moved.Units, moved.ServiceSteps)
	}
}

// Without systemd join writes no unit, and only says what to run.
func TestPlanJoinChannelWithoutService(t *testing.T) {
	req := channelRequest(t, 37515)
	req.Service.Systemd = false
	p, err := PlanJoin(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Units) > 0 || len(p.ServiceSteps) > 0 || len(p.Substituter) == 0 {
		t.Errorf("planned units %+v, steps %q, command %q", p.Units, p.ServiceSteps, p.Substituter)
	}
	if _, err := os.Stat(req.Service.UnitDir); err == nil {
		t.Error("planning made the unit directory")
	}
}

// More connections than sshd takes sessions on one connection are refused
// before anything is read, unless the cache's admin raised MaxSessions that
// far; a nixcache:// cache takes no --max-connections at all.
func TestPlanJoinCapsConnectionsAtMaxSessions(t *testing.T) {
	for _, tc := range []struct {
		scheme                 string
		connections, sessions  int
		refused, defaultLimit  bool
		channelMaxConnsRefused bool
	}{
		{scheme: "ssh", connections: 10},
		{scheme: "ssh-ng", connections: 11, refused: true, defaultLimit: true},
		{scheme: "ssh", connections: 64, refused: true, defaultLimit: true},
		{scheme: "ssh", connections: 11, sessions: 12},
		{scheme: "ssh-ng", connections: 12, sessions: 12},
		{scheme: "ssh", connections: 16, sessions: 12, refused: true},
		{scheme: "ssh", connections: 8, sessions: 4, refused: true},
		{scheme: "nixcache", connections: 2, channelMaxConnsRefused: true},
		{scheme: "nixcache", connections: 0, sessions: 4},
	} {
		req := channelRequest(t, 37515)
		req.Cache.Scheme = tc.scheme
		req.Cache.MaxConnections = tc.connections
		req.ServerMaxSessions = tc.sessions
		req.Loc.NixConfDir = filepath.Join(t.TempDir(), "does-not-matter")
		_, err := PlanJoin(t.Context(), req)
		var tooMany *TooManySessions
		var channel *ChannelMaxConnections
		switch {
		case tc.refused && (!errors.As(err, &tooMany) || tooMany.Default != tc.defaultLimit):
			t.Errorf("%+v: %v, want a refusal (default limit %v)", tc, err, tc.defaultLimit)
		case tc.channelMaxConnsRefused && !errors.As(err, &channel):
			t.Errorf("%+v: %v, want --max-connections refused for nixcache://", tc, err)
		case !tc.refused && errors.As(err, &tooMany), !tc.channelMaxConnsRefused && errors.As(err, &channel):
			t.Errorf("%+v: refused: %v", tc, err)
		}
		if tc.refused || tc.channelMaxConnsRefused {
			if _, err := os.Stat(string(req.Loc.SSHDir)); err == nil {
				t.Errorf("%+v: the refusal came after join made files", tc)
			}
		}
	}
}

// The unit keeps the substituter running for ever, before the daemon, as
// root with its files readable, and its command reaches systemd word for
// word: systemd reads %, $, quotes and backslashes in ExecStart.
func TestRenderUnit(t *testing.T) {
	argv := SubstituterArgv("/opt/nix cache/bin/nixcache", sshconf.Target{User: "nix-ssh", Host: "cache.example.org", Port: 2222}, 37515,
		`/root/odd "dir" 100%$HOME\x`, 4)
	unit, err := RenderUnit(argv)
	if err != nil {
		t.Fatal(err)
	}
	text := string(unit)
	for _, line := range []string{
		`ExecStart="/opt/nix cache/bin/nixcache" client substituter --cache ssh://nix-ssh@cache.example.org:2222 --listen 127.0.0.1:37515 --ssh-dir "/root/odd \"dir\" 100%%$$HOME\\x" --server-max-sessions 4 --channels 4`,
		"Restart=always", "RestartSec=1", "StartLimitIntervalSec=0",
		"After=network-online.target", "Wants=network-online.target", "Before=nix-daemon.service", "WantedBy=multi-user.target",
		"Requires=nixcache-substituter.socket", "After=nixcache-substituter.socket",
		// Root's ssh directory stays readable; nothing else is writable.
		"ProtectHome=read-only", "ProtectSystem=strict", "PrivateTmp=yes", "CapabilityBoundingSet=", "NoNewPrivileges=yes",
	} {
		if !slices.Contains(strings.Split(text, "\n"), line) {
			t.Errorf("the unit lacks the line %s:\n%s", line, text)
		}
	}
	for _, bad := range [][]string{
		{"/usr/bin/nixcache", "--ssh-dir", "/root/.ssh\n[Service]\nExecStartPre=/bin/sh -c evil"},
		{"/usr/bin/nixcache", "\x00"},
		{"nixcache", "client", "substituter"},
	} {
		if u, err := RenderUnit(bad); err == nil {
			t.Errorf("RenderUnit(%q) rendered:\n%s", bad, u)
		}
	}
}

// systemd itself accepts the units, when its analyzer is installed.
func TestRenderedUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze is not installed: the unit was not checked by systemd")
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	unit, err := RenderUnit(SubstituterArgv(exe, sshconf.Target{User: "nix-ssh", Host: "cache", Port: 22}, 37515, "/root/.ssh", 0))
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	file, socket := filepath.Join(dir, SubstituterUnit), filepath.Join(dir, SubstituterSocket)
	if err := os.WriteFile(file, unit, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(socket, RenderSocket(37515), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", socket, file).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// The printed command, run by sh, gets exactly its words.
func TestShellCommandSurvivesSh(t *testing.T) {
	argv := []string{"printf", `%s\0`}
	for _, w := range hostile {
		argv = append(argv, w)
	}
	out, err := exec.Command("/bin/sh", "-c", ShellCommand(argv)).Output()
	if err != nil {
		t.Fatal(err)
	}
	if want := strings.Join(argv[2:], "\x00") + "\x00"; string(out) != want {
		t.Errorf("sh got %q, want %q", out, want)
	}
}

// Whatever the words, the unit has the lines RenderUnit writes and no
// other, and ExecStart, read as systemd reads it, gives back the words.
func FuzzRenderUnit(f *testing.F) {
	f.Add("/usr/bin/nixcache", "/root/.ssh")
	f.Add("/opt/nix cache/nixcache", `/root/a "b" 100%$HOME\x`)
	f.Add("/bin/x", "a\n[Service]\nExecStartPre=/bin/evil")
	f.Add("/bin/x", `"" '' \\" %n ${X} $X`)
	template, err := RenderUnit([]string{"/x"})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, exe, dir string) {
		argv := SubstituterArgv(exe, sshconf.Target{User: "nix-ssh", Host: "cache", Port: 22}, 37515, sshconf.Dir(dir), 0)
		unit, err := RenderUnit(argv)
		if err != nil {
			return
		}
		got, want := strings.Split(string(unit), "\n"), strings.Split(string(template), "\n")
		if len(got) != len(want) {
			t.Fatalf("%d lines, want %d:\n%s", len(got), len(want), unit)
		}
		for i := range got {
			if strings.HasPrefix(want[i], "ExecStart=") {
				words, ok := systemdWords(strings.TrimPrefix(got[i], "ExecStart="))
				if !ok || !slices.Equal(words, argv) {
					t.Fatalf("ExecStart %q reads as %q (%v), want %q", got[i], words, ok, argv)
				}
			} else if got[i] != want[i] {
				t.Fatalf("line %d is %q, want %q", i+1, got[i], want[i])
			}
		}
	})
}

// systemdWords splits an ExecStart value as systemd does for the forms
// unitWord writes: bare words, and double-quoted ones with \\ and \"
// escapes; then %% and $$ stand for % and $. A lone % or $ would be a
// specifier or a variable.
func systemdWords(s string) ([]string, bool) {
	var words []string
	for s != "" {
		var w strings.Builder
		if s[0] == '"' {
			i := 1
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' {
					if i+1 == len(s) || (s[i+1] != '\\' && s[i+1] != '"') {
						return nil, false
					}
					i++
				}
				w.WriteByte(s[i])
			}
			if i == len(s) {
				return nil, false
			}
			s = s[i+1:]
		} else {
			i := strings.IndexByte(s, ' ')
			if i < 0 {
				i = len(s)
			}
			if strings.ContainsAny(s[:i], `"\'`) {
				return nil, false
			}
			w.WriteString(s[:i])
			s = s[i:]
		}
		word := w.String()
		for _, pair := range []string{"%", "$"} {
			if strings.Count(word, pair)%2 != 0 || strings.Contains(strings.ReplaceAll(word, pair+pair, ""), pair) {
				return nil, false
			}
			word = strings.ReplaceAll(word, pair+pair, pair)
		}
		words = append(words, word)
		if s != "" {
			if s[0] != ' ' {
				return nil, false
			}
			s = s[1:]
		}
	}
	return words, true
}
