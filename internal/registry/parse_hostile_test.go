package registry

import (
	"runtime"
	"strings"
	"testing"
	"time"
)

// A registry kept in git can come from a pull request: a hostile one must be
// refused quickly, naming its line, and without the memory a TOML decoder
// spends on deeply nested values.
func TestParseRefusesHostileShapesCheaply(t *testing.T) {
	const n = 3000
	for _, tc := range []struct{ name, text, want string }{
		{"nested inline tables", "version = 1\nclients = " + strings.Repeat("{a=", n) + strings.Repeat("}", n) + "\n", "line 2: "},
		{"nested inline tables in a client", "version = 1\n[clients.a]\nkey = " + strings.Repeat("{a=", n) + strings.Repeat("}", n) + "\n", "line 3: "},
		{"nested arrays", "version = 1\n\nx = " + strings.Repeat("[", n) + strings.Repeat("]", n) + "\n", "line 3: "},
		{"long dotted key", "version = 1\n" + strings.Repeat("clients.", n) + "a = 1\n", "line 2: "},
		{"long dotted table", "version = 1\n[" + strings.Repeat("clients.", n) + "a]\n", "line 2: "},
		{"long array", "version = 1\n[clients.a]\nkey = [" + strings.Repeat("1,", 100*n) + "]\n", "line 3: "},
		{"many unknown settings", "version = 1\n" + strings.Repeat("a = 1\nb = 2\n", 10*n), "line 2: "},
		{"array of tables", "version = 1\n[[clients]]\n" + strings.Repeat("[[clients]]\n", 10*n), "line 2: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			start := time.Now()
			done := make(chan error, 1)
			go func() { _, err := Parse([]byte(tc.text)); done <- err }()
			var err error
			select {
			case err = <-done:
			case <-time.After(10 * time.Second):
				t.Fatal("Parse still running after 10s")
			}
			took := time.Since(start)
			runtime.ReadMemStats(&after)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("Parse: %v, want an error starting %q", err, tc.want)
			}
			if alloc, bound := after.TotalAlloc-before.TotalAlloc, uint64(1<<20+16*len(tc.text)); alloc > bound {
				t.Errorf("Parse of %d bytes allocated %d bytes (bound %d), took %v", len(tc.text), alloc, bound, took)
			}
		})
	}
}
