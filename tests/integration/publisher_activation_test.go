//go:build harness

package integration_test

import (
	"context"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Under systemd socket activation (the NixOS module's
// nixcache-publisher.socket) the publisher answers on the socket it is
// given, whose owner, group and mode systemd set: it makes no socket of its
// own at --listen.
func TestPublisherTakesSystemdsSocket(t *testing.T) {
	bin, err := env.Nixcache()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "passed.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	f, err := l.File()
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	registry := filepath.Join(dir, "clients.toml")
	if err := os.WriteFile(registry, []byte("# nixcache clients registry\nversion = 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	notUsed := filepath.Join(dir, "not-used.sock")
	logFile, err := os.Create(filepath.Join(dir, "publisher.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logFile.Close()
	log := func() string { b, _ := os.ReadFile(logFile.Name()); return string(b) }
	// As systemd starts a socket-activated service: the socket is fd 3 and
	// LISTEN_PID names the service's own PID.
	cmd := exec.Command("sh", "-c", `LISTEN_PID=$$ LISTEN_FDS=1 exec "$@"`, "sh",
		bin, "publisher", "--listen", notUsed, "--registry", registry, "--secret-key-file", env.CacheSecretKey,
		"--roots", filepath.Join(dir, "roots"), "--audit-log", filepath.Join(dir, "audit.log"))
	cmd.Env = env.Environ()
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	}()
	client := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	record := `{"time":"2026-11-29T06:00:00Z","client":"build-01","key":"","role":"pull","op":"narinfo","bytes":1,"status":200,"duration_ms":1}`
	var resp *http.Response
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err = client.Post("http://publisher/audit", "application/json", strings.NewReader(record))
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("the publisher does not answer on systemd's socket: %v\n%s", err, log())
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		t.Fatalf("an audit record on systemd's socket: %s\n%s", resp.Status, log())
	}
	if _, err := os.Lstat(notUsed); err == nil {
		t.Errorf("the publisher made a socket of its own at --listen besides systemd's")
	}
	logged, err := os.ReadFile(filepath.Join(dir, "audit.log"))
	if err != nil || !strings.Contains(string(logged), `"client":"build-01"`) {
		t.Errorf("the audit log: %q, %v", logged, err)
	}
}
