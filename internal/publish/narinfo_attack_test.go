package publish

import (
	"crypto/ed25519"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/nixcache/nixcache/internal/registry"
)

// A push key's narinfo names store paths that are not store paths: go-nix's
// storepath.FromString cleans its argument (path.Join) before matching, so
// "HASH-a/../HASH2-b" and "HASH-a/." passed for names. The daemon
// canonicalises such a path to another one than the publisher checked,
// rooted and locked (and "HASH-a/." crashed the handler on its hash part).
func TestAttackNarinfoPathsThatAreNotStorePathNames(t *testing.T) {
	const other = "cccccccccccccccccccccccccccccccc-other"
	for name, bad := range map[string]string{
		"StorePath through ..":  strings.Replace(good, "StorePath: "+self, "StorePath: "+self+"/../"+other, 1),
		"StorePath with /.":     strings.Replace(good, "StorePath: "+self, "StorePath: "+self+"/.", 1),
		"StorePath with /":      strings.Replace(good, "StorePath: "+self, "StorePath: "+self+"/", 1),
		"StorePath with //":     strings.Replace(good, "StorePath: "+self, "StorePath: /nix/store//"+self[len("/nix/store/"):], 1),
		"reference through ..":  strings.Replace(good, "-glibc", "-glibc/../"+other, 1),
		"reference with /.":     strings.Replace(good, "-glibc", "-glibc/.", 1),
		"deriver through ..":    strings.Replace(good, "-hello.drv", "-hello.drv/../"+other+".drv", 1),
		"reference given twice": strings.Replace(good, "-glibc\n", "-glibc bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-glibc\n", 1),
	} {
		if c, err := parseNarinfo([]byte(bad), "/nix/store"); err == nil {
			t.Errorf("%s: accepted as %+v", name, c)
		}
	}

	// Through the handler, as a registered push client: a 400, not a panic.
	dir := t.TempDir()
	reg := dir + "/clients.toml"
	pub, _, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := registry.Edit(reg, true, func(r *registry.Registry) error { return r.Add("builder", key, "", registry.Push) }); err != nil {
		t.Fatal(err)
	}
	p := New(Config{Registry: reg, DaemonSocket: dir + "/no-daemon"})
	body := strings.Replace(good, "StorePath: "+self, "StorePath: "+self+"/.", 1) + "\nNAR"
	req := httptest.NewRequest(http.MethodPut, "/upload/"+self[len("/nix/store/"):][:32], strings.NewReader(body))
	req.Header.Set(HeaderClient, "builder")
	req.Header.Set(HeaderKey, ssh.FingerprintSHA256(key))
	w := httptest.NewRecorder()
	p.ServeHTTP(w, req)
	if w.Code != http.StatusBadRequest {
		t.Errorf("StorePath %s/.: %d %q, want 400", self, w.Code, w.Body.String())
	}
}
