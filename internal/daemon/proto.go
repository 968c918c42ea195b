// Package daemon is a client for the Nix daemon's worker protocol, spoken
// over the daemon's Unix socket. It implements the handshake with version
// negotiation, the daemon's stderr message loop, and the operations nixcache
// needs to read path metadata and add signatures.
//
// Wire primitives (little-endian uint64, padded strings) are go-nix's wire
// package. The protocol state machine itself is written here: go-nix has no
// daemon client, and the Nix sources are the specification (worker-protocol.hh,
// remote-store.cc, daemon.cc).
package daemon

import "fmt"

// Version is a worker protocol version, major<<8 | minor.
type Version uint64

// Major and Minor split a version the way Nix's GET_PROTOCOL_MAJOR/MINOR do.
func (v Version) Major() uint64 { return uint64(v) >> 8 & 0xff }
func (v Version) Minor() uint64 { return uint64(v) & 0xff }

func (v Version) String() string { return fmt.Sprintf("%d.%d", v.Major(), v.Minor()) }

const (
	// ClientVersion is what this client advertises: protocol 1.37 (Nix 2.20
	// and later speak at least this; 1.38 adds a feature exchange we do not need).
	ClientVersion Version = 1<<8 | 37
	// MinVersion is the oldest daemon accepted: 1.21 is Nix 2.3's protocol.
	MinVersion Version = 1<<8 | 21

	workerMagic1 = 0x6e697863
	workerMagic2 = 0x6478696f
)

// Operation codes from Nix's worker-protocol.hh.
const (
	opIsValidPath        = 1
	opEnsurePath         = 10
	opQueryAllValidPaths = 23
	opQueryPathInfo      = 26
	opQueryValidPaths    = 31
	opAddSignatures      = 37
)

// Messages the daemon sends on its "stderr" channel before each reply.
const (
	stderrNext          = 0x6f6c6d67
	stderrRead          = 0x64617461
	stderrWrite         = 0x64617416
	stderrLast          = 0x616c7473
	stderrError         = 0x63787470
	stderrStartActivity = 0x53545254
	stderrStopActivity  = 0x53544f50
	stderrResult        = 0x52534c54
)

// Trust is the daemon's view of this client, sent from protocol 1.35 on.
type Trust int

const (
	TrustUnknown Trust = iota // daemon older than 1.35
	Trusted
	NotTrusted
)

func (t Trust) String() string {
	switch t {
	case Trusted:
		return "trusted"
	case NotTrusted:
		return "not trusted"
	}
	return "unknown"
}
