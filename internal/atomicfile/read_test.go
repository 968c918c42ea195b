package atomicfile

import (
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A FIFO where a file is expected would block a reader until someone writes
// to it: it is refused at once.
func TestReadCappedRefusesAFIFOAtOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "nix.conf")
	if err := syscall.Mkfifo(path, 0o644); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, _, err := ReadCapped(path, 1024, "a nix.conf"); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("ReadCapped of a FIFO: %v, want \"not a regular file\"", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ReadCapped of a FIFO is still blocked after 5s")
	}
}
