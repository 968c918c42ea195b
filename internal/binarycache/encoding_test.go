package binarycache

import (
	"bytes"
	"crypto/rand"
	"io"
	"net/http/httptest"
	"strconv"
	"testing"

	"github.com/klauspost/compress/zstd"
)

// A NAR goes out compressed only when its sample compresses, and decodes to
// exactly what went in either way.
func TestAdaptiveEncoding(t *testing.T) {
	random := make([]byte, 3*sampleSize+123)
	rand.Read(random)
	text := bytes.Repeat([]byte("ELF binary with its strings and symbols "), 20000)
	for _, tc := range []struct {
		name string
		nar  []byte
		zstd bool
	}{
		{"incompressible", random, false},
		{"compressible", text, true},
		{"compressible, shorter than the sample", text[:sampleSize/2], true},
		{"tiny", text[:minCompressed-1], false},
		{"empty", nil, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			a := &adaptiveWriter{w: rec, size: uint64(len(tc.nar))}
			// In odd pieces, as the daemon's stream arrives.
			for rest := tc.nar; len(rest) > 0; {
				n := min(len(rest), 70001)
				if _, err := a.Write(rest[:n]); err != nil {
					t.Fatal(err)
				}
				rest = rest[n:]
			}
			if err := a.Close(); err != nil {
				t.Fatal(err)
			}
			body := rec.Body.Bytes()
			if got := rec.Header().Get("Content-Encoding") == "zstd"; got != tc.zstd {
				t.Fatalf("compressed: %v, want %v", got, tc.zstd)
			}
			if tc.zstd {
				d, err := zstd.NewReader(bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				defer d.Close()
				if body, err = io.ReadAll(d); err != nil {
					t.Fatal(err)
				}
				if rec.Header().Get("Content-Length") != "" {
					t.Error("a compressed NAR announces the uncompressed length")
				}
			} else if cl := rec.Header().Get("Content-Length"); cl != strconv.Itoa(len(tc.nar)) {
				t.Errorf("Content-Length %q, want %d", cl, len(tc.nar))
			}
			if !bytes.Equal(body, tc.nar) {
				t.Errorf("the NAR decodes to %d bytes that differ from the %d sent", len(body), len(tc.nar))
			}
		})
	}
}
