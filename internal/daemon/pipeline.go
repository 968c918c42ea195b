package daemon

import (
	"errors"
)

// The daemon reads one request, answers it, then reads the next, so a client
// may send many requests before reading the first reply; the replies come
// back in order. The batch operations below do that, which turns one round
// trip per path into one per batch.
//
// An operation that fails inside the daemon (a *RemoteError) leaves the
// connection usable, and its error is handed to the callback; any other
// error ends the batch and leaves the Conn unusable.

// QueryPathInfos asks for the metadata of every path in paths, calling
// each(i, info, err) in order with ErrNotValid or a *RemoteError as err for
// paths that have none. If each returns an error the batch stops with it.
func (c *Conn) QueryPathInfos(paths []string, each func(i int, info *PathInfo, err error) error) error {
	return c.pipeline(len(paths),
		func(w *errWriter, i int) { writeQueryPathInfo(w, paths[i]) },
		func(i int) error {
			var info *PathInfo
			err := c.readReply(func() (err error) {
				info, err = c.readPathInfoReply(paths[i])
				if errors.Is(err, ErrNotValid) {
					return nil
				}
				return err
			})
			if isFatal(err) {
				return err
			}
			if err == nil && info == nil {
				err = ErrNotValid
			}
			return each(i, info, err)
		})
}

// Signing is one AddSignatures request.
type Signing struct {
	Path string
	Sigs []string
}

// AddSignaturesBatch adds signatures to many paths, calling each(i, err) in
// order with a *RemoteError for paths the daemon refused.
func (c *Conn) AddSignaturesBatch(reqs []Signing, each func(i int, err error) error) error {
	return c.pipeline(len(reqs),
		func(w *errWriter, i int) { writeAddSignatures(w, reqs[i].Path, reqs[i].Sigs) },
		func(i int) error {
			err := c.readReply(c.readAddSignaturesReply)
			if isFatal(err) {
				return err
			}
			return each(i, err)
		})
}

func isFatal(err error) bool {
	var re *RemoteError
	return err != nil && !errors.As(err, &re)
}

// pipeline writes n requests from one goroutine while reading their replies
// in this one, so that neither side blocks on a full socket buffer.
func (c *Conn) pipeline(n int, write func(w *errWriter, i int), read func(i int) error) error {
	done := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		w := &errWriter{w: c.w}
		for i := 0; i < n && w.err == nil; i++ {
			select {
			case <-done:
				werr <- nil
				return
			default:
			}
			write(w, i)
		}
		if w.err == nil {
			w.err = c.w.Flush()
		}
		if w.err != nil {
			// Replies to unsent requests will never come: wake the reader.
			c.nc.Close()
		}
		werr <- w.err
	}()
	for i := range n {
		if err := read(i); err != nil {
			close(done)
			// The writer may be blocked on a daemon that stopped reading;
			// closing the connection releases it. The Conn is spent anyway.
			c.nc.Close()
			if wErr := <-werr; wErr != nil {
				return wErr
			}
			return err
		}
	}
	return <-werr
}
