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

// The public key file is checked again after the secret key is written: a
// directory symlink that did not resolve before may resolve to the secret
// key's directory once it is made.
func TestWriteKeyPairNeverDestroysAKey(t *testing.T) {
	k, _ := Generate("pair-1")
	dir := t.TempDir()

	secret := filepath.Join(dir, "new", "key")
	if err := os.Symlink("new", filepath.Join(dir, "alias")); err != nil {
		t.Fatal(err)
	}
	err := WriteKeyPair(secret, filepath.Join(dir, "alias", "key"), k, true)
	var notPublic *NotPublicKeyError
	if !errors.As(err, &notPublic) || !notPublic.Secret {
		t.Fatalf("public key file through a dangling directory symlink: %v", err)
	}
	if got, _, err := ReadSecretKeyFile(secret); err != nil || got.Text() != k.Text() {
		t.Fatalf("the secret key did not survive: %v", err)
	}

	// A hard link is the same file under another name.
	link := filepath.Join(dir, "hard")
	if err := os.Link(secret, link); err != nil {
		t.Fatal(err)
	}
	var same *SameFileError
	if err := WriteKeyPair(secret, link, k, true); !errors.As(err, &same) {
		t.Fatalf("a hard link to the secret key: %v", err)
	}
}
