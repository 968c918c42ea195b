package daemon

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"

	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/nix-community/go-nix/pkg/wire"
)

// Operation codes for adding paths, from Nix's worker-protocol.hh.
const (
	opAddTempRoot    = 11
	opAddToStoreNar  = 39
	framedNarMinimum = 23 // protocol minor that sends the NAR in frames (Nix 2.4)

	// frameSize is the most NAR bytes one frame carries. The daemon
	// allocates each frame whole before reading it; 64 KiB keeps that small.
	frameSize = 64 << 10
)

// NarMismatchError says the NAR read for AddToStoreNar did not match the
// path info it came with: longer or shorter than NarSize, or another hash.
// The last frame was never sent, so the daemon made nothing valid; the
// connection is closed.
type NarMismatchError struct{ Msg string }

func (e *NarMismatchError) Error() string { return e.Msg }

// NarReadError is a failure to read the NAR itself (an upload cut off). The
// connection is closed and nothing was made valid.
type NarReadError struct{ Err error }

func (e *NarReadError) Error() string { return "reading the NAR: " + e.Err.Error() }
func (e *NarReadError) Unwrap() error { return e.Err }

// ErrNoFramedNar is returned by AddToStoreNar for a daemon too old to take
// a NAR in frames.
var ErrNoFramedNar = errors.New("uploads need a server Nix ≥ 2.4 (worker protocol 1.23)")

// AddTempRoot keeps path from garbage collection for as long as this
// connection is open, valid or not.
func (c *Conn) AddTempRoot(path string) error {
	return c.do(func(w *errWriter) {
		w.uint(opAddTempRoot)
		w.string(path)
	}, func() error {
		_, err := wire.ReadUint64(c.r) // always 1
		return err
	})
}

// AddToStoreNar imports one path: info (Path, Deriver, NarHash, References,
// NarSize, Sigs, CA; registration time and "ultimate" are never claimed)
// and its NAR, read from nar as it is sent, in frames of at most 64 KiB.
// It never asks for a repair and never waives the signature check, so the
// daemon accepts an input-addressed path only with a signature by a key it
// trusts. The daemon also adds a temporary root for the path that lasts as
// long as the connection.
//
// The NAR must be exactly NarSize bytes whose SHA-256 is NarHash: the last
// frame is held back until the reader has ended and the hash matched, so the
// daemon never receives a whole NAR that was not checked (a daemon that
// finds the path valid already would otherwise take any bytes). On a
// mismatch (*NarMismatchError), a read error (*NarReadError) or any
// failure while the NAR is in flight, the connection is closed: it is
// unusable. A *RemoteError after the NAR was sent leaves it usable.
func (c *Conn) AddToStoreNar(info *PathInfo, nar io.Reader) error {
	if c.version.Minor() < framedNarMinimum {
		return fmt.Errorf("%w; the daemon speaks protocol %s", ErrNoFramedNar, c.version)
	}
	if len(info.NarHash) != sha256.Size {
		return fmt.Errorf("NAR hash of %s is %d bytes, not a SHA-256 hash", info.Path, len(info.NarHash))
	}
	if info.NarSize == 0 {
		return fmt.Errorf("NAR size of %s is 0; a NAR is never empty", info.Path)
	}
	w := &errWriter{w: c.w}
	w.uint(opAddToStoreNar)
	w.string(info.Path)
	w.string(info.Deriver)
	w.string(hex.EncodeToString(info.NarHash)) // base16 without the type, as Nix sends it
	w.strings(info.References)
	w.uint(0) // registration time: the daemon's clock decides
	w.uint(info.NarSize)
	w.bool(false) // ultimate: the daemon did not build it
	w.strings(info.Sigs)
	w.string(info.CA)
	w.bool(false) // repair
	w.bool(false) // dontCheckSigs
	if w.err == nil {
		w.err = c.w.Flush()
	}
	if w.err != nil {
		c.Close()
		return w.err
	}
	// The daemon may log while it reads the NAR. As in Nix's own client
	// (withFramedSink), its messages are read while the frames are written,
	// so neither side can block on a full socket buffer.
	c.in.reset()
	finished := make(chan struct{})
	var result error
	go func() {
		result = c.processStderr()
		close(finished)
	}()
	if err := c.sendFramedNar(info, nar, finished); err != nil {
		c.Close()
		<-finished
		if errors.Is(err, errDaemonEnded) {
			// The daemon's own reason, if it gave one.
			if result == nil {
				return &ProtocolError{"the daemon ended AddToStoreNar before the NAR was sent"}
			}
			return result
		}
		return err
	}
	<-finished
	var re *RemoteError
	if result != nil && !errors.As(result, &re) {
		c.Close()
	}
	return result
}

var errDaemonEnded = errors.New("the daemon ended the operation early")

// sendFramedNar writes the NAR as frames (a uint64 length, then that many
// bytes, no padding) and the empty frame that ends it.
func (c *Conn) sendFramedNar(info *PathInfo, nar io.Reader, finished <-chan struct{}) error {
	buf := make([]byte, min(frameSize, info.NarSize))
	h := sha256.New()
	var sent uint64
	for sent < info.NarSize {
		select {
		case <-finished:
			return errDaemonEnded
		default:
		}
		n, err := fill(nar, buf[:min(uint64(len(buf)), info.NarSize-sent)])
		h.Write(buf[:n])
		if err == io.EOF {
			return &NarMismatchError{fmt.Sprintf("the NAR is %d bytes, shorter than its NarSize %d", sent+uint64(n), info.NarSize)}
		}
		if err != nil {
			return &NarReadError{err}
		}
		if sent+uint64(n) == info.NarSize {
			if err := checkNarEnd(nar, h, info); err != nil {
				return err
			}
		}
		if err := wire.WriteUint64(c.w, uint64(n)); err != nil {
			return err
		}
		if _, err := c.w.Write(buf[:n]); err != nil {
			return err
		}
		sent += uint64(n)
	}
	if err := wire.WriteUint64(c.w, 0); err != nil {
		return err
	}
	return c.w.Flush()
}

// checkNarEnd is called with the last frame still unsent: the reader must
// end exactly here and the hash must match.
func checkNarEnd(nar io.Reader, h hash.Hash, info *PathInfo) error {
	var one [1]byte
	n, err := fill(nar, one[:])
	if n > 0 {
		return &NarMismatchError{fmt.Sprintf("the NAR is longer than its NarSize %d", info.NarSize)}
	}
	if err != io.EOF {
		return &NarReadError{err}
	}
	if got := h.Sum(nil); !bytes.Equal(got, info.NarHash) {
		return &NarMismatchError{fmt.Sprintf("the NAR's hash is sha256:%s, not the sha256:%s it was sent with",
			nixbase32.EncodeToString(got), nixbase32.EncodeToString(info.NarHash))}
	}
	return nil
}

// fill reads until p is full or the reader fails. Unlike io.ReadFull, it
// tells a clean end (io.EOF, with what was read) from a broken one
// (io.ErrUnexpectedEOF from a cut HTTP body stays what it is).
func fill(r io.Reader, p []byte) (int, error) {
	n := 0
	for n < len(p) {
		m, err := r.Read(p[n:])
		n += m
		if err != nil && n < len(p) {
			return n, err
		}
	}
	return n, nil
}
