package daemon

import (
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/nix-community/go-nix/pkg/wire"
)

// PathInfo is the metadata the daemon keeps for a valid store path.
type PathInfo struct {
	Path             string
	Deriver          string // "" when unknown
	NarHash          []byte // SHA-256 digest of the path's NAR serialisation
	References       []string
	RegistrationTime uint64 // seconds since the epoch
	NarSize          uint64
	Ultimate         bool     // built locally rather than copied in
	Sigs             []string // "keyname:base64" signatures
	CA               string   // content address, "" for input-addressed paths
}

// ErrNotValid is returned by QueryPathInfo for a path that is not in the store.
var ErrNotValid = errors.New("path is not valid in the store")

// IsValidPath reports whether path is a valid store path.
func (c *Conn) IsValidPath(path string) (bool, error) {
	var valid bool
	err := c.do(func(w *errWriter) {
		w.uint(opIsValidPath)
		w.string(path)
	}, func() (err error) {
		valid, err = c.readBool()
		return err
	})
	return valid, err
}

// EnsurePath makes path valid, substituting it if needed; the daemon's
// substituters and trusted keys decide where from and whether to accept it.
func (c *Conn) EnsurePath(path string) error {
	return c.do(func(w *errWriter) {
		w.uint(opEnsurePath)
		w.string(path)
	}, func() error {
		_, err := wire.ReadUint64(c.r) // always 1
		return err
	})
}

// QueryAllValidPaths lists every valid path in the store.
func (c *Conn) QueryAllValidPaths() ([]string, error) {
	var paths []string
	err := c.do(func(w *errWriter) {
		w.uint(opQueryAllValidPaths)
	}, func() (err error) {
		paths, err = c.readStrings()
		return err
	})
	return paths, err
}

// QueryValidPaths returns the subset of paths that are valid, without
// substituting any of them.
func (c *Conn) QueryValidPaths(paths []string) ([]string, error) {
	var valid []string
	err := c.do(func(w *errWriter) {
		w.uint(opQueryValidPaths)
		w.strings(paths)
		if c.version.Minor() >= 27 {
			w.bool(false) // do not substitute
		}
	}, func() (err error) {
		valid, err = c.readStrings()
		return err
	})
	return valid, err
}

// QueryPathInfo returns the metadata of path, or ErrNotValid.
func (c *Conn) QueryPathInfo(path string) (*PathInfo, error) {
	var info *PathInfo
	err := c.do(func(w *errWriter) { writeQueryPathInfo(w, path) },
		func() (err error) {
			info, err = c.readPathInfoReply(path)
			return err
		})
	return info, err
}

// AddSignatures attaches signatures to a valid path. The daemon allows this
// only to trusted users (root and nix.conf's trusted-users).
func (c *Conn) AddSignatures(path string, sigs []string) error {
	return c.do(func(w *errWriter) { writeAddSignatures(w, path, sigs) }, c.readAddSignaturesReply)
}

func writeQueryPathInfo(w *errWriter, path string) {
	w.uint(opQueryPathInfo)
	w.string(path)
}

func writeAddSignatures(w *errWriter, path string, sigs []string) {
	w.uint(opAddSignatures)
	w.string(path)
	w.strings(sigs)
}

func (c *Conn) readAddSignaturesReply() error {
	// The daemon answers 1; the value carries no information.
	_, err := wire.ReadUint64(c.r)
	return err
}

// readPathInfoReply reads QueryPathInfo's answer: from protocol 1.17 on
// (every version we accept) a validity flag, then the path info.
func (c *Conn) readPathInfoReply(path string) (*PathInfo, error) {
	valid, err := c.readBool()
	if err != nil {
		return nil, err
	}
	if !valid {
		return nil, ErrNotValid
	}
	info := &PathInfo{Path: path}
	if info.Deriver, err = c.readString(); err != nil {
		return nil, err
	}
	hash, err := c.readString()
	if err != nil {
		return nil, err
	}
	if info.NarHash, err = parseNarHash(hash); err != nil {
		return nil, &ProtocolError{fmt.Sprintf("NAR hash of %s: %v", path, err)}
	}
	if info.References, err = c.readStrings(); err != nil {
		return nil, err
	}
	if info.RegistrationTime, err = wire.ReadUint64(c.r); err != nil {
		return nil, err
	}
	if info.NarSize, err = wire.ReadUint64(c.r); err != nil {
		return nil, err
	}
	// Protocol 1.16 added these; every version we accept has them.
	if info.Ultimate, err = c.readBool(); err != nil {
		return nil, err
	}
	if info.Sigs, err = c.readStrings(); err != nil {
		return nil, err
	}
	if info.CA, err = c.readString(); err != nil {
		return nil, err
	}
	return info, nil
}

var sha256Algo = nixhash.SHA256

// parseNarHash accepts the daemon's hex digest, with or without a "sha256:"
// prefix, and the other encodings Nix's Hash::parseAny accepts.
func parseNarHash(s string) ([]byte, error) {
	h, err := nixhash.ParseAny(s, &sha256Algo)
	if err != nil {
		return nil, err
	}
	d := h.Digest()
	if len(d) != sha256.Size {
		return nil, fmt.Errorf("not a SHA-256 digest")
	}
	return d, nil
}

func (c *Conn) readStrings() ([]string, error) {
	n, err := wire.ReadUint64(c.r)
	if err != nil {
		return nil, err
	}
	// Each string takes at least 8 bytes, so a count the rest of the reply
	// cannot hold is a lie told up front.
	if n > uint64(c.in.left+int64(c.r.Buffered()))/8 {
		return nil, &ProtocolError{fmt.Sprintf("list of %d strings is longer than a reply may be", n)}
	}
	// The count is the peer's word: the list grows as strings arrive.
	ss := make([]string, 0, min(n, 512))
	for range n {
		s, err := c.readString()
		if err != nil {
			return nil, err
		}
		ss = append(ss, s)
	}
	return ss, nil
}

// do runs one operation: write the request, then read the daemon's log and
// the reply.
func (c *Conn) do(write func(*errWriter), read func() error) error {
	w := &errWriter{w: c.w}
	write(w)
	if w.err != nil {
		return w.err
	}
	if err := c.w.Flush(); err != nil {
		return err
	}
	return c.readReply(read)
}

func (c *Conn) readReply(read func() error) error {
	c.in.reset()
	if err := c.processStderr(); err != nil {
		return err
	}
	return c.readErr(read())
}
