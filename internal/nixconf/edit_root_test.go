//go:build harness

package nixconf

import (
	"errors"
	"strings"
	"syscall"
	"testing"
)

// Root ignores file modes, so a read-only mount is the only way to test
// EROFS, and mounting needs root: this runs with the harness's tests
// (go test -tags harness, as scripts/test.sh does).
func TestAReadOnlyFileSystemIsReadOnly(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		t.Fatalf("cannot mount a tmpfs (the harness tests run as root): %v", err)
	}
	t.Cleanup(func() {
		if err := syscall.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %q: %v", dir, err)
		}
	})
	writeFiles(t, dir, map[string]string{"nix.conf": "sandbox = false\n"})
	if err := syscall.Mount("", dir, "", syscall.MS_REMOUNT|syscall.MS_RDONLY, ""); err != nil {
		t.Fatal(err)
	}
	_, err := mustLoad(t, dir).Add(join, EditOptions{GenericExtra: true})
	var ro *ReadOnlyError
	if !errors.As(err, &ro) || !strings.Contains(ro.Reason, "read-only file system") {
		t.Fatalf("Add: %v, want a *ReadOnlyError", err)
	}
}
