//go:build !linux

package service

// FindDaemon is implemented for Linux only.
func FindDaemon(socket string) (*Daemon, error) { return nil, ErrUnsupported }
