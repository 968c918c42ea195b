package publish

import (
	"net"
	"slices"
)

// PeerListener accepts only connections whose peer (SO_PEERCRED, what the
// kernel recorded when the peer connected) runs as one of the allowed
// uids; any other connection is closed before a byte is read from it. It
// is step 1 of the import: the socket's mode is a second fence, not the
// only one.
type PeerListener struct {
	*net.UnixListener
	Allowed []uint32
	// Refused is told of each refused connection (for the log); may be nil.
	Refused func(uid uint32, err error)
}

// Accept returns the next connection from an allowed uid.
func (l *PeerListener) Accept() (net.Conn, error) {
	for {
		c, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		uid, err := PeerUID(c)
		if err == nil && slices.Contains(l.Allowed, uid) {
			return c, nil
		}
		c.Close()
		if l.Refused != nil {
			l.Refused(uid, err)
		}
	}
}
