//go:build !linux

package publish

import (
	"errors"
	"net"
)

// PeerUID needs SO_PEERCRED, which only Linux has; the publisher runs on
// the cache server, which is Linux (NixOS).
func PeerUID(*net.UnixConn) (uint32, error) {
	return 0, errors.New("peer credentials (SO_PEERCRED) need Linux")
}
