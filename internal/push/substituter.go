package push

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"

	"github.com/nixcache/nixcache/internal/binarycache"
	"github.com/nixcache/nixcache/internal/daemon"
)

// What push asks of the local substituter, as docs/uploads.md specifies:
// POST /nixcache-missing and PUT /nixcache-upload/HASH.

// ParseURL checks the substituter's URL: plain http to a loopback address.
// The substituter takes uploads only from local users it can name by their
// socket (root and --upload-user), and it listens only on loopback; an
// upload anywhere else would travel unauthenticated and in the clear.
func ParseURL(s string) (*url.URL, error) {
	u, err := url.Parse(s)
	if err != nil || u.Scheme != "http" || u.Host == "" || u.User != nil || u.RawQuery != "" || u.Fragment != "" {
		return nil, fmt.Errorf("--to %q is not http://ADDRESS:PORT: push uploads through the local substituter, which speaks plain http on loopback", s)
	}
	host := u.Hostname()
	if ip, err := netip.ParseAddr(host); (err != nil || !ip.IsLoopback()) && host != "localhost" {
		return nil, fmt.Errorf("--to %q is not a loopback address: the substituter listens only on loopback and takes uploads only from this machine's users", s)
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	return u, nil
}

// StatusError is the cache's (or the substituter's) answer to a request
// that failed: its status and the one line it gave as the reason.
type StatusError struct {
	Status  int
	Message string
}

func (e *StatusError) Error() string {
	msg := e.Message
	if msg == "" {
		msg = http.StatusText(e.Status)
	}
	return fmt.Sprintf("%d %s", e.Status, msg)
}

// UnreachableError says the substituter did not take the connection.
type UnreachableError struct {
	URL string
	Err error
}

func (e *UnreachableError) Error() string {
	return fmt.Sprintf("cannot reach the substituter at %s: %v", e.URL, e.Err)
}
func (e *UnreachableError) Unwrap() error { return e.Err }

// substituter talks to the local substituter at base.
type substituter struct {
	base   *url.URL
	client *http.Client
}

func (s *substituter) url(p string) string { return s.base.String() + p }

// reachErr turns a failure to connect into an UnreachableError; anything
// else stays as it is.
func (s *substituter) reachErr(err error) error {
	var op *net.OpError
	if errors.As(err, &op) && op.Op == "dial" {
		return &UnreachableError{URL: s.base.String(), Err: op.Err}
	}
	return err
}

// missing returns the paths the cache lacks, in batches within the cache's
// limits, one round trip each.
func (s *substituter) missing(ctx context.Context, paths []string) (map[string]bool, error) {
	lacks := make(map[string]bool)
	for len(paths) > 0 {
		n, size := 0, 0
		for n < len(paths) && n < binarycache.MaxMissing && size+len(paths[n])+1 <= binarycache.MaxMissingBytes {
			size += len(paths[n]) + 1
			n++
		}
		if n == 0 {
			return nil, fmt.Errorf("%.80s... is too long a store path", paths[0])
		}
		batch := paths[:n]
		paths = paths[n:]
		got, err := s.missingBatch(ctx, batch)
		if err != nil {
			return nil, err
		}
		for _, p := range got {
			lacks[p] = true
		}
	}
	return lacks, nil
}

func (s *substituter) missingBatch(ctx context.Context, batch []string) ([]string, error) {
	body := strings.Join(batch, "\n") + "\n"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url(binarycache.MissingPath), strings.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "text/plain")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("asking the cache which paths it lacks: %w", s.reachErr(err))
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("asking the cache which paths it lacks: %w", answer(resp))
	}
	// The answer is a subsequence of the question: it can be no longer.
	data, err := io.ReadAll(io.LimitReader(resp.Body, int64(len(body))+1))
	if err != nil {
		return nil, fmt.Errorf("asking the cache which paths it lacks: %w", err)
	}
	if len(data) > len(body) {
		return nil, errors.New("the cache's list of missing paths is longer than the question")
	}
	var lacks []string
	at := 0
	for line := range strings.Lines(string(data)) {
		p := strings.TrimSuffix(line, "\n")
		if p == "" {
			continue
		}
		for at < len(batch) && batch[at] != p {
			at++
		}
		if at == len(batch) {
			return nil, fmt.Errorf("the cache answered with a path it was not asked about, or out of order (%.100q)", p)
		}
		lacks = append(lacks, p)
		at++
	}
	return lacks, nil
}

// upload sends one path: its narinfo, an empty line, then its NAR, streamed
// from nars as the daemon dumps it and counted into sent. It returns the
// status of a success (201 imported, 200 already valid and now published).
// A failure of the daemon leaves nars unusable, and says so with narErr.
func (s *substituter) upload(ctx context.Context, nars narSource, info *daemon.PathInfo, sent func(int)) (status int, narErr, err error) {
	head := binarycache.NarInfo(info) + "\n"
	pr, pw := io.Pipe()
	body := struct {
		io.Reader
		io.Closer
	}{io.MultiReader(strings.NewReader(head), pr), pr}
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, s.url(binarycache.UploadPrefix+hashPart(info.Path)), body)
	if err != nil {
		return 0, nil, err
	}
	req.ContentLength = int64(len(head)) + int64(info.NarSize)
	req.Header.Set("Content-Type", "application/octet-stream")
	dumped := make(chan error, 1)
	cw := &countingWriter{w: pw, count: sent}
	go func() {
		err := nars.NarFromPath(info.Path, info.NarSize, cw)
		pw.CloseWithError(err)
		dumped <- err
	}()
	resp, err := s.client.Do(req)
	// The transport closes the body when it is done with it, early too
	// (an answer before the whole NAR was read): that stops the dump.
	pr.CloseWithError(errors.New("the upload ended"))
	if err == nil {
		defer resp.Body.Close()
	}
	narErr = <-dumped
	// A dump that failed while writing was cut off by the request; one that
	// failed otherwise is the daemon's failure.
	if narErr != nil && !cw.failed && (err != nil || resp.StatusCode/100 == 2) {
		// The daemon's failure is why the request failed (or is the
		// failure, should the server have accepted a truncated body).
		return 0, narErr, fmt.Errorf("reading the NAR from the Nix daemon: %w", narErr)
	}
	if err != nil {
		return 0, narErr, s.reachErr(err)
	}
	if narErr != nil && resp.StatusCode/100 == 2 {
		return 0, narErr, fmt.Errorf("the cache answered %d before it had the whole NAR", resp.StatusCode)
	}
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		return 0, narErr, answer(resp)
	}
	return resp.StatusCode, narErr, nil
}

// answer is the StatusError of a failed response: its status and the first
// line of its body, of at most 1 KiB.
func answer(resp *http.Response) *StatusError {
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1024))
	line, _, _ := bytes.Cut(data, []byte("\n"))
	return &StatusError{Status: resp.StatusCode, Message: strings.TrimSpace(string(line))}
}

// narSource dumps NARs: a daemon connection.
type narSource interface {
	NarFromPath(path string, size uint64, w io.Writer) error
	Close() error
}

// countingWriter counts what it passes on, and remembers whether passing it
// on failed (the request stopped reading), as opposed to the daemon.
type countingWriter struct {
	w      io.Writer
	count  func(int)
	failed bool
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.count(n)
	c.failed = err != nil
	return n, err
}

func hashPart(storePath string) string {
	base := storePath[strings.LastIndexByte(storePath, '/')+1:]
	h, _, _ := strings.Cut(base, "-")
	return h
}
