//go:build harness

package substituter

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The attack: the admin gives --spool-dir /tmp/nixcache, which a local user
// made first. The substituter's private directories are then made in a
// directory that user owns: the user renames them away and puts a symlink
// in their place, and root's upload files land wherever it points.
func TestSpoolDirOthersOwnIsRefused(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test plays root and a local user: run it as root")
	}
	for _, c := range []struct {
		name  string
		owner int
		mode  os.FileMode
	}{
		{"another user's", nobody(), 0o755},
		{"writable by all, not sticky", 0, 0o777},
		{"under another user's", -1, 0o755},
	} {
		t.Run(c.name, func(t *testing.T) {
			f := newFixture(t, Options{})
			base := t.TempDir()
			parent := filepath.Join(base, "nixcache")
			if c.owner == -1 {
				// Root's own directory, inside one the user owns (and may
				// rename it in).
				if err := os.Chown(base, nobody(), nobody()); err != nil {
					t.Fatal(err)
				}
				c.owner = 0
			}
			if err := os.Mkdir(parent, c.mode); err != nil {
				t.Fatal(err)
			}
			os.Chmod(parent, c.mode)
			if err := os.Chown(parent, c.owner, c.owner); err != nil {
				t.Fatal(err)
			}
			srv, err := NewServer(f.up, Options{SpoolDir: parent})
			if err != nil {
				if !strings.Contains(err.Error(), parent) {
					t.Errorf("the refusal does not name the directory: %v", err)
				}
				return
			}
			defer srv.Close()
			// What the user does: the private directory away, a symlink to
			// a directory of their choosing in its place.
			victim := t.TempDir()
			os.Chmod(victim, 0o755)
			private := srv.uploadSpool.dir
			if err := os.Rename(private, private+".away"); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(victim, private); err != nil {
				t.Fatal(err)
			}
			nar := testNAR(100, 1)
			if err := srv.uploadSpool.put(nix32sha(nar)+".nar", nix32sha(nar), strings.NewReader(string(nar)), int64(len(nar))); err != nil {
				t.Logf("put: %v", err)
			}
			if entries, _ := os.ReadDir(victim); len(entries) > 0 {
				t.Fatalf("a spool directory in %s (%s) was taken: root wrote %s into the user's chosen directory", parent, c.name, entries[0].Name())
			}
			t.Fatalf("a spool directory in %s (%s) was taken", parent, c.name)
		})
	}
}
