package binarycache

import (
	"crypto/rand"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"testing"
)

// What the adaptive encoding costs the server per NAR byte, for a
// compressible NAR (the Go toolchain's own binary, as typical build output)
// and an incompressible one: go test -bench Encoding ./internal/binarycache
// (results in docs/benchmarks.md).
func BenchmarkEncoding(b *testing.B) {
	binary, err := os.ReadFile(filepath.Join(runtime.GOROOT(), "bin", "go"))
	if err != nil {
		b.Fatal(err)
	}
	random := make([]byte, len(binary))
	rand.Read(random)
	for _, tc := range []struct {
		name string
		nar  []byte
	}{{"binary", binary}, {"random", random}} {
		b.Run(tc.name, func(b *testing.B) {
			b.SetBytes(int64(len(tc.nar)))
			var out int
			for b.Loop() {
				rec := httptest.NewRecorder()
				a := &adaptiveWriter{w: rec, size: uint64(len(tc.nar))}
				if _, err := a.Write(tc.nar); err != nil {
					b.Fatal(err)
				}
				if err := a.Close(); err != nil {
					b.Fatal(err)
				}
				out = rec.Body.Len()
			}
			b.ReportMetric(float64(out)/float64(len(tc.nar)), "ratio")
		})
	}
}
