package main

import (
	"fmt"
	"net"
	"os"
	"strconv"
)

// systemdSocket is the one socket systemd passed this process (socket
// activation), or nil when it passed none. listen is the address the
// socket unit should name, for the error when it passed more.
func systemdSocket(listen string) (net.Listener, error) {
	if os.Getenv("LISTEN_PID") != strconv.Itoa(os.Getpid()) {
		return nil, nil
	}
	if n := os.Getenv("LISTEN_FDS"); n != "1" {
		return nil, fmt.Errorf("systemd passed %q sockets, want 1: ListenStream=%s in the socket unit", n, listen)
	}
	f := os.NewFile(3, "systemd socket")
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("the socket systemd passed: %w", err)
	}
	return l, nil
}
