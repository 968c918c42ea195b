package binarycache

import (
	"bytes"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
)

// NARs go out zstd-compressed to a client that asks for it (Accept-Encoding:
// zstd; 'nixcache client substituter' does, and decompresses before Nix
// sees the NAR, so narinfos stay "Compression: none"), but only when a
// sample compresses: store paths are often compressed already (tarballs,
// images, random test data), and those must not pay for a second try.
// zstd's fastest level compresses binaries to about a quarter at several
// hundred MB/s a core, far above a WAN link (docs/benchmarks.md).
const (
	// sampleSize is how much of a NAR decides its encoding.
	sampleSize = 256 << 10
	// minCompressed is the smallest NAR worth compressing: below it the
	// frame and the decision cost more than they save.
	minCompressed = 4 << 10
	// maxRatio is the compressed size, relative to the sample, above which
	// the NAR goes out as it is.
	maxRatio = 0.9
)

var sampler, _ = zstd.NewWriter(nil, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))

func acceptsZstd(r *http.Request) bool {
	for _, v := range r.Header.Values("Accept-Encoding") {
		for _, e := range strings.Split(v, ",") {
			name, _, _ := strings.Cut(strings.TrimSpace(e), ";")
			if strings.EqualFold(name, "zstd") {
				return true
			}
		}
	}
	return false
}

// adaptiveWriter holds back the first sampleSize bytes of a NAR of size
// bytes, then sets the response's encoding from how well they compress and
// streams the rest, compressed or not. Close finishes the response.
type adaptiveWriter struct {
	w      http.ResponseWriter
	size   uint64
	sample []byte
	out    writeCloser // nil until decided
}

type writeCloser interface {
	Write([]byte) (int, error)
	Close() error
}

func (a *adaptiveWriter) Write(p []byte) (int, error) {
	if a.out != nil {
		return a.out.Write(p)
	}
	n := len(p)
	room := sampleSize - len(a.sample)
	if len(p) < room {
		a.sample = append(a.sample, p...)
		return n, nil
	}
	a.sample = append(a.sample, p[:room]...)
	if err := a.decide(); err != nil {
		return 0, err
	}
	if _, err := a.out.Write(p[room:]); err != nil {
		return 0, err
	}
	return n, nil
}

func (a *adaptiveWriter) decide() error {
	compress := len(a.sample) >= minCompressed &&
		float64(len(sampler.EncodeAll(a.sample, nil))) <= maxRatio*float64(len(a.sample))
	if compress {
		a.w.Header().Set("Content-Encoding", "zstd")
		a.w.Header().Del("Content-Length")
		enc, err := zstd.NewWriter(a.w, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if err != nil {
			return err
		}
		a.out = enc
	} else {
		a.w.Header().Set("Content-Length", strconv.FormatUint(a.size, 10))
		a.out = nopCloser{a.w}
	}
	sample := a.sample
	a.sample = nil
	_, err := a.out.Write(sample)
	return err
}

// Close decides, for a NAR shorter than the sample, and ends the stream.
func (a *adaptiveWriter) Close() error {
	if a.out == nil {
		if err := a.decide(); err != nil {
			return err
		}
	}
	return a.out.Close()
}

type nopCloser struct{ w http.ResponseWriter }

func (n nopCloser) Write(p []byte) (int, error) { return n.w.Write(p) }
func (nopCloser) Close() error                  { return nil }

// CompressBody is the adaptive encoding for a body sent the other way (an
// upload): it reads the first sampleSize bytes of body, decides as
// adaptiveWriter does, and returns the body to send and its
// Content-Encoding ("zstd", or "" for as it is). The request's headers go
// out before its body, so the decision is made up front. Reading the
// returned reader reads body; an error of body reaches it. Close it (an
// http.Request's transport does) to stop the compressor early.
func CompressBody(body io.Reader) (io.ReadCloser, string, error) {
	sample := make([]byte, sampleSize)
	n, err := io.ReadFull(body, sample)
	sample = sample[:n]
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		body, err = strings.NewReader(""), nil
	}
	if err != nil {
		return nil, "", err
	}
	if len(sample) < minCompressed || float64(len(sampler.EncodeAll(sample, nil))) > maxRatio*float64(len(sample)) {
		return io.NopCloser(io.MultiReader(bytes.NewReader(sample), body)), "", nil
	}
	pr, pw := io.Pipe()
	go func() {
		enc, err := zstd.NewWriter(pw, zstd.WithEncoderLevel(zstd.SpeedFastest), zstd.WithEncoderConcurrency(1))
		if err == nil {
			_, err = io.Copy(enc, io.MultiReader(bytes.NewReader(sample), body))
			if cerr := enc.Close(); err == nil {
				err = cerr
			}
		}
		pw.CloseWithError(err)
	}()
	return pr, "zstd", nil
}
