//go:build harness

package main

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// A cache that refuses this key's uploads (403): push stops, exits 1, and
// the hint says whom to ask for the push role; --json still reports every
// path.
func TestPushForbiddenHintAndJSON(t *testing.T) {
	cl, err := env.Build(3)
	if err != nil {
		t.Fatal(err)
	}
	uploads := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/nixcache-missing" {
			io.Copy(w, r.Body) // lacks everything
			return
		}
		uploads++
		http.Error(w, "this client's key has the pull role: it may not upload\x1b[2J", http.StatusForbidden)
	}))
	defer srv.Close()
	t.Setenv("NIX_DAEMON_SOCKET_PATH", env.Socket)
	t.Setenv("NIXCACHE_CONFIG", "")

	var stdout, stderr bytes.Buffer
	if code := run([]string{"nixcache", "push", "--to", srv.URL, "-r", cl.Top}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, stderr.String())
	}
	for _, want := range []string{
		"nixcache: not pushed: " + cl.Paths[0],
		"403 this client's key has the pull role: it may not upload\\x1b[2J",
		"nixcache: 3 of 3 paths were not pushed",
		"hint: this client's key has the pull role: ask the cache's admin for `nixcache clients set-role NAME push`",
	} {
		if !strings.Contains(stderr.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, stderr.String())
		}
	}
	if strings.Contains(stderr.String(), "\x1b") {
		t.Error("the cache's escape sequence reached the terminal")
	}
	if !strings.HasPrefix(stdout.String(), "pushed 0 (0.0 MiB in ") || !strings.Contains(stdout.String(), "already in the cache 0, failed 3") {
		t.Errorf("stdout: %q", stdout.String())
	}
	if uploads != 1 {
		t.Errorf("%d uploads, want 1: a 403 stops the run", uploads)
	}

	stdout.Reset()
	stderr.Reset()
	if code := run([]string{"nixcache", "push", "--to", srv.URL, "--json", "-r", cl.Top}, &stdout, &stderr); code != 1 {
		t.Fatalf("--json: exit %d, want 1", code)
	}
	var rep struct {
		Pushed, Skipped []string
		Failed          []struct {
			Path   string
			Status int
			Error  string
		}
		Bytes   int64
		Seconds float64
	}
	if err := json.Unmarshal(stdout.Bytes(), &rep); err != nil {
		t.Fatalf("%v: %s", err, stdout.String())
	}
	if rep.Pushed == nil || rep.Skipped == nil || len(rep.Failed) != 3 || rep.Failed[0].Status == 0 && rep.Failed[1].Status == 0 && rep.Failed[2].Status == 0 {
		t.Errorf("report %+v", rep)
	}
	if !strings.Contains(stderr.String(), "set-role NAME push") {
		t.Errorf("--json: no hint on stderr:\n%s", stderr.String())
	}
}

// The substituter's own refusal (a user that may not upload through it) is
// not the cache's: the hint says how to run push, not whom to ask.
func TestPushRefusedBySubstituterHint(t *testing.T) {
	cl, err := env.Build(1)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/nixcache-missing" {
			io.Copy(w, r.Body)
			return
		}
		http.Error(w, "nixcache substituter: uploads through this substituter are for root and --upload-user users; uid 1000 is neither", http.StatusForbidden)
	}))
	defer srv.Close()
	t.Setenv("NIX_DAEMON_SOCKET_PATH", env.Socket)
	t.Setenv("NIXCACHE_CONFIG", "")
	var stdout, stderr bytes.Buffer
	if code := run([]string{"nixcache", "push", "--to", srv.URL, cl.Top}, &stdout, &stderr); code != 1 {
		t.Fatalf("exit %d, want 1\n%s", code, stderr.String())
	}
	if !strings.Contains(stderr.String(), "hint: run push as root, or as a user the substituter is started for with --upload-user USER") ||
		strings.Contains(stderr.String(), "set-role") {
		t.Errorf("stderr:\n%s", stderr.String())
	}
}
