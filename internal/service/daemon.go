package service

import (
	"errors"
	"time"
)

// Daemon is the running nix-daemon that serves a socket, identified by
// FindDaemon.
type Daemon struct {
	PID     int
	Started time.Time
	// Env is the daemon's environment: NIX_CONF_DIR, NIX_SSHOPTS and the
	// like decide what it reads and how its ssh connects. FindDaemon fills
	// it only for a daemon that runs as root, so that it is root's choice.
	Env map[string]string
}

// ErrNotFound says no nix-daemon process serves the socket.
var ErrNotFound = errors.New("no nix-daemon process listens on the socket")

// ErrUntrusted says what serves the socket is not a nix-daemon running as
// root: nothing in its environment can be taken for the daemon's settings.
var ErrUntrusted = errors.New("the socket is not served by a nix-daemon running as root")

// ErrUnsupported says this platform's processes cannot be inspected.
var ErrUnsupported = errors.New("finding the daemon's process is implemented for Linux only")
