package nixkey

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadSecretKeyFileCapsSize(t *testing.T) {
	k, err := Generate("big-1")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "key")
	// A valid key followed by enough white space to pass the cap.
	if err := os.WriteFile(p, []byte(k.Text()+strings.Repeat("\n", MaxKeyFileSize)), 0o600); err != nil {
		t.Fatal(err)
	}
	_, _, err = ReadSecretKeyFile(p)
	if err == nil || !strings.Contains(err.Error(), "too large to be a Nix key file") {
		t.Fatalf("err = %v, want a size error", err)
	}
	if strings.Contains(err.Error(), k.Text()[len("big-1:"):][:8]) {
		t.Fatal("the error quotes the key")
	}
}

func TestWriteSecretKeyFile(t *testing.T) {
	k, _ := Generate("w-1")
	p := filepath.Join(t.TempDir(), "new-dir", "key")
	if err := WriteSecretKeyFile(p, k, false); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Dir(p)); st.Mode().Perm() != 0o700 {
		t.Errorf("created directory has mode %v, want 0700", st.Mode().Perm())
	}
	err := WriteSecretKeyFile(p, k, false)
	var exists *ExistsError
	if !errors.As(err, &exists) || !errors.Is(err, fs.ErrExist) {
		t.Fatalf("second write: %v, want an ExistsError", err)
	}
	got, loose, err := ReadSecretKeyFile(p)
	if err != nil || loose || got.Text() != k.Text() {
		t.Fatalf("read back: loose=%v err=%v", loose, err)
	}
}
