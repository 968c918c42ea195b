//go:build harness

// Package integration_test checks internal packages against the real
// nix-daemon the harness runs: what needs root and the daemon lives here, so
// that the internal packages' own tests run as any user (go test ./...).
package integration_test

import (
	"os"
	"testing"

	"github.com/nixcache/nixcache/tests/harness"
)

var env *harness.Env

func TestMain(m *testing.M) { os.Exit(harness.RunTests(m, &env)) }
