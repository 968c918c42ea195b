package publish

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// The import's steps that need the daemon are tested against a real one in
// tests/integration/publish_test.go; these are the checks made before it.

const (
	self = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello"
	good = "StorePath: " + self + "\n" +
		"URL: nar/x.nar.zst\nCompression: zstd\nFileSize: 9\n" +
		"NarHash: sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s\n" +
		"NarSize: 120\n" +
		"References: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-hello bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-glibc\n" +
		"Deriver: dddddddddddddddddddddddddddddddd-hello.drv\n" +
		"Sig: not even a signature\n" +
		"Future: ignored\n"
)

func TestParseNarinfo(t *testing.T) {
	c, err := parseNarinfo([]byte(good), "/nix/store")
	if err != nil {
		t.Fatal(err)
	}
	if c.Path != self || c.NarSize != 120 || len(c.NarHash) != 32 ||
		strings.Join(c.References, " ") != self+" /nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-glibc" ||
		c.Deriver != "/nix/store/dddddddddddddddddddddddddddddddd-hello.drv" {
		t.Errorf("parsed %+v", c)
	}
	for name, bad := range map[string]string{
		"no NarHash":        strings.Replace(good, "NarHash", "Nar-Hash", 1),
		"md5 NarHash":       strings.Replace(good, "sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s", "md5:"+strings.Repeat("0", 32), 1),
		"zero NarSize":      strings.Replace(good, "NarSize: 120", "NarSize: 0", 1),
		"NarSize twice":     good + "NarSize: 121\n",
		"other store":       strings.Replace(good, "StorePath: /nix/store/", "StorePath: /gnu/store/", 1),
		"path under a path": strings.Replace(good, "-hello\n", "-hello/bin\n", 1),
		"bad reference":     strings.Replace(good, "-glibc", "-gl/ibc", 1),
		"relative deriver":  strings.Replace(good, "Deriver: ", "Deriver: ../", 1),
		"no colon":          good + "garbage\n",
		"bad CA":            good + "CA: sha256:abc\n",
	} {
		if _, err := parseNarinfo([]byte(bad), "/nix/store"); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestReadNarinfoStopsAtTheEmptyLine(t *testing.T) {
	r := bufio.NewReader(strings.NewReader(good + "\nNAR\n\nbytes"))
	text, err := readNarinfo(r)
	if err != nil || string(text) != good {
		t.Fatalf("%q, %v", text, err)
	}
	rest, _ := io.ReadAll(r)
	if string(rest) != "NAR\n\nbytes" {
		t.Errorf("the NAR part is %q", rest)
	}
	long := strings.Repeat("References: "+strings.Repeat("x", 1000)+"\n", 70)
	if _, err := readNarinfo(bufio.NewReader(strings.NewReader(long + "\n"))); err != errNarinfoTooLong {
		t.Errorf("a narinfo over 64 KiB: %v", err)
	}
	if _, err := readNarinfo(bufio.NewReader(strings.NewReader(good))); err == nil {
		t.Error("a body without the empty line was accepted")
	}
}

func TestUploadChecksBeforeTheDaemon(t *testing.T) {
	dir := t.TempDir()
	reg := dir + "/clients.toml"
	p := New(Config{Registry: reg, DaemonSocket: dir + "/no-daemon", MaxNarSize: 100})
	put := func(client, key, body string) (int, string) {
		req := httptest.NewRequest(http.MethodPut, "/upload", strings.NewReader(body))
		req.Header.Set(HeaderClient, client)
		req.Header.Set(HeaderKey, key)
		w := httptest.NewRecorder()
		p.ServeHTTP(w, req)
		return w.Code, w.Body.String()
	}
	// No registry: nobody may upload.
	if code, msg := put("c", "SHA256:x", good+"\n"); code != http.StatusServiceUnavailable {
		t.Errorf("without a registry: %d %q", code, msg)
	}
	req := httptest.NewRequest(http.MethodGet, "/upload", nil)
	w := httptest.NewRecorder()
	p.ServeHTTP(w, req)
	if w.Code != http.StatusMethodNotAllowed {
		t.Errorf("GET /upload: %d", w.Code)
	}
}
