package nixkey

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// base64Part is the part of text after its first ':' when that part is long
// and made only of base64's alphabet: long enough that no error message
// could contain it by chance, so an error that does quotes the input.
func base64Part(text string) string {
	_, data, ok := strings.Cut(strings.TrimSpace(text), ":")
	if !ok || len(data) < 16 || strings.Trim(data, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=") != "" {
		return ""
	}
	return data
}

func checkName(t *testing.T, name string) {
	t.Helper()
	if name == "" {
		t.Fatal("a key parsed with an empty name")
	}
	for i := 0; i < len(name); i++ {
		if b := name[i]; b <= ' ' || b >= 0x7f || b == ':' || b == '#' {
			t.Fatalf("a key parsed with the name %q", name)
		}
	}
}

// checkNoKeyMaterial fails when msg, an error message with any file name
// taken out, quotes the key in text.
func checkNoKeyMaterial(t *testing.T, text, msg string) {
	t.Helper()
	if data := base64Part(text); data != "" && strings.Contains(msg, data) {
		t.Fatalf("the error quotes the key: %s", msg)
	}
}

// checkText parses text both ways and checks that what parses survives its
// own text form unchanged, and that what does not is never quoted.
func checkText(t *testing.T, text string) {
	if pub, err := ParsePublicKey(text); err != nil {
		checkNoKeyMaterial(t, text, err.Error())
	} else {
		checkName(t, pub.Name)
		again, err := ParsePublicKey(pub.String())
		if err != nil || again.String() != pub.String() {
			t.Fatalf("public key %q does not parse back: %v", pub.String(), err)
		}
	}
	if sec, err := ParseSecretKey(text); err != nil {
		checkNoKeyMaterial(t, text, err.Error())
	} else {
		checkName(t, sec.Name())
		again, err := ParseSecretKey(sec.Text())
		if err != nil || again.Text() != sec.Text() || again.Public().String() != sec.Public().String() {
			t.Fatalf("secret key %q does not parse back: %v", sec.Name(), err)
		}
	}
}

func FuzzKeyText(f *testing.F) {
	for _, s := range []string{
		nixosKey,
		"test-only-1:" + testPublicB64,
		"test-only-1:" + testSecretB64 + "\n",
		"demo\u00a0x-1:" + testPublicB64,
		"\u00a0test-only-1:" + testPublicB64,
		"test-only-1:" + testSecretB64 + "\r\n",
		":" + testPublicB64,
		testSecretB64,
		"a#b:" + testPublicB64,
		"test-only-1:" + testPublicB64[:20] + "!" + testPublicB64[21:],
		"test-only-1:Lq0PaH4eeUzCQr4sOyuhWDeijPFAO0teXcwD4HBng70xuakMvTx90AQxB082s+Dm3Xg/R9LmUQjwo7YFXypGWQ==",
	} {
		f.Add(s)
	}
	f.Fuzz(checkText)
}

// Key files read as key strings do, and their errors name the file but
// never quote it.
func FuzzKeyFile(f *testing.F) {
	f.Add([]byte("test-only-1:" + testSecretB64 + "\n"))
	f.Add([]byte("test-only-1:" + testPublicB64 + "  \n\n"))
	f.Add([]byte("test-only-1:" + testSecretB64[:40] + "\r\n"))
	// No seed past MaxKeyFileSize: mutating and minimizing 64 KiB inputs
	// slows the fuzzer to a crawl; file_test.go covers the cap.
	// One directory for every input this process runs, each overwriting
	// the last: a directory per input made the fuzzer crawl.
	dir := f.TempDir()
	f.Fuzz(func(t *testing.T, data []byte) {
		path := filepath.Join(dir, "key")
		if err := os.WriteFile(path, data, 0o600); err != nil {
			t.Fatal(err)
		}
		text := string(data)
		pub, pubErr := ReadPublicKeyFile(path)
		sec, _, secErr := ReadSecretKeyFile(path)
		for _, err := range []error{pubErr, secErr} {
			if err == nil {
				continue
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("the error does not name the file: %v", err)
			}
			checkNoKeyMaterial(t, text, strings.ReplaceAll(err.Error(), path, ""))
		}
		if len(data) > MaxKeyFileSize {
			if pubErr == nil || secErr == nil {
				t.Fatalf("a %d-byte file was read as a key", len(data))
			}
			return
		}
		if want, err := ParsePublicKey(text); (err == nil) != (pubErr == nil) || err == nil && want.String() != pub.String() {
			t.Fatalf("ReadPublicKeyFile and ParsePublicKey disagree: %v, %v", pubErr, err)
		}
		if want, err := ParseSecretKey(text); (err == nil) != (secErr == nil) || err == nil && want.Text() != sec.Text() {
			t.Fatalf("ReadSecretKeyFile and ParseSecretKey disagree: %v, %v", secErr, err)
		}
		checkText(t, text)
	})
}
