package daemon

import (
	"fmt"
	"io"
	"math"
)

// Operation codes for serving a binary cache, from Nix's worker-protocol.hh.
const (
	opQueryPathFromHashPart = 29
	opNarFromPath           = 38
)

// QueryPathFromHashPart returns the valid store path whose hash part (the 32
// characters after /nix/store/) is hash, or "" if there is none.
func (c *Conn) QueryPathFromHashPart(hash string) (string, error) {
	var path string
	err := c.do(func(w *errWriter) {
		w.uint(opQueryPathFromHashPart)
		w.string(hash)
	}, func() (err error) {
		path, err = c.readString()
		return err
	})
	return path, err
}

// NarFromPath writes path's NAR serialisation to w. The daemon sends it
// after its reply with no length or end marker, so the caller gives the size
// it has from QueryPathInfo; exactly that many bytes are read, and the
// connection stays usable.
func (c *Conn) NarFromPath(path string, size uint64, w io.Writer) error {
	if size > math.MaxInt64/2 {
		return &ProtocolError{Msg: fmt.Sprintf("a NAR of %d bytes", size)}
	}
	return c.do(func(ew *errWriter) {
		ew.uint(opNarFromPath)
		ew.string(path)
	}, func() error {
		// The NAR is not part of the reply's budget: its size is known.
		c.in.left += int64(size)
		_, err := io.CopyN(w, c.r, int64(size))
		if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return err
	})
}
