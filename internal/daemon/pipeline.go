package daemon

import (
	"context"
	"errors"
)

// The daemon reads one request, answers it, then reads the next, so a client
// may send many requests before reading the first reply; the replies come
// back in order. The operations below do that, which turns one round trip
// per path into one per batch.
//
// An operation that fails inside the daemon (a *RemoteError) or finds no
// such path (ErrNotValid) leaves the connection usable, and its error is
// handed to the callback; any other error ends the batch and leaves the Conn
// unusable.

// QueryPathInfos asks for the metadata of every path in paths, calling
// each(i, info, err) in order with ErrNotValid or a *RemoteError as err for
// paths that have none. If each returns an error the batch stops with it.
func (c *Conn) QueryPathInfos(paths []string, each func(i int, info *PathInfo, err error) error) error {
	return stream(context.Background(), c, feed(paths),
		func(w *errWriter, i int) { writeQueryPathInfo(w, paths[i]) },
		func(i int) error {
			var info *PathInfo
			err := c.readReply(func() (err error) {
				info, err = c.readPathInfoReply(paths[i])
				return err
			})
			if isFatal(err) {
				return err
			}
			return each(i, info, err)
		})
}

// Signing is one AddSignatures request.
type Signing struct {
	Path string
	Sigs []string
}

// AddSignaturesStream sends each request that arrives on reqs as soon as it
// arrives, so that signing can overlap with reading path info elsewhere, and
// calls each with its result in order. It returns once reqs is closed and
// every reply is in, or at the first fatal error, or when ctx is done.
func (c *Conn) AddSignaturesStream(ctx context.Context, reqs <-chan Signing, each func(Signing, error) error) error {
	return stream(ctx, c, reqs,
		func(w *errWriter, r Signing) { writeAddSignatures(w, r.Path, r.Sigs) },
		func(r Signing) error {
			err := c.readReply(c.readAddSignaturesReply)
			if isFatal(err) {
				return err
			}
			return each(r, err)
		})
}

// isFatal reports whether err leaves the connection unusable.
func isFatal(err error) bool {
	var re *RemoteError
	return err != nil && !errors.As(err, &re) && !errors.Is(err, ErrNotValid)
}

// feed returns a closed channel holding the indexes of items.
func feed[T any](items []T) <-chan int {
	ch := make(chan int, len(items))
	for i := range items {
		ch <- i
	}
	close(ch)
	return ch
}

// stream writes a request for each value from reqs in one goroutine and
// reads the replies in this one, so that neither side blocks on a full
// socket buffer.
func stream[T any](ctx context.Context, c *Conn, reqs <-chan T, write func(*errWriter, T), read func(T) error) error {
	sent := make(chan T, 1024)
	done := make(chan struct{})
	werr := make(chan error, 1)
	go func() {
		err := writeAll(ctx, c, reqs, sent, done, write)
		if err != nil {
			// Replies to unsent requests will never come: wake the reader.
			c.nc.Close()
		}
		werr <- err
		close(sent)
	}()
	for r := range sent {
		if err := read(r); err != nil {
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

// writeAll writes a request for each value from reqs and passes the value
// on to sent, where the reader expects its reply. It flushes before it waits
// for anything, so the reader never waits for a reply to a request that is
// still in the buffer. It stops early, without error, when done is closed.
func writeAll[T any](ctx context.Context, c *Conn, reqs <-chan T, sent chan<- T, done <-chan struct{}, write func(*errWriter, T)) error {
	w := &errWriter{w: c.w}
	for {
		var r T
		var ok bool
		select {
		case r, ok = <-reqs:
		default:
			if err := c.w.Flush(); err != nil {
				return err
			}
			select {
			case r, ok = <-reqs:
			case <-done:
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		if !ok {
			return c.w.Flush()
		}
		if write(w, r); w.err != nil {
			return w.err
		}
		select {
		case sent <- r:
		default:
			if err := c.w.Flush(); err != nil {
				return err
			}
			select {
			case sent <- r:
			case <-done:
				return nil
			}
		}
	}
}
