//go:build !linux

package service

import (
	"errors"
	"time"
)

// Daemon is the running nix-daemon that listens on a socket.
type Daemon struct {
	PID     int
	Started time.Time
	Env     map[string]string
}

// ErrNotFound says no nix-daemon process listens on the socket.
var ErrNotFound = errors.New("no nix-daemon process listens on the socket")

// ErrUnsupported says this platform's processes cannot be inspected.
var ErrUnsupported = errors.New("finding the daemon's process is implemented for Linux only")

// FindDaemon is implemented for Linux only.
func FindDaemon(socket string) (*Daemon, error) { return nil, ErrUnsupported }
