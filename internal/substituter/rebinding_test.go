package substituter

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

// A web page the user visits can point a name of its own at 127.0.0.1 (DNS
// rebinding) and have the browser fetch from the substituter: same-origin
// for the page, so it could read the cache's narinfos and NARs. The
// browser sends the page's name as Host; Nix sends the address it was
// given. Only loopback names are answered.
func TestRefusesRequestsForAnotherHost(t *testing.T) {
	f := newFixture(t, Options{SpoolBytes: -1})
	f.cache.addPath(1, 10)
	for _, host := range []string{"attacker.example", "attacker.example:80", "127.0.0.1.attacker.example", "10.0.0.1"} {
		req, err := http.NewRequest("GET", f.url+"/"+storeHash(1)+".narinfo", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden || strings.Contains(string(body), "StorePath") {
			t.Errorf("Host %q: %s %q, want 403 and nothing from the cache", host, resp.Status, body)
		}
	}
	if got := f.cache.files.requests(); len(got) != 0 {
		t.Errorf("the cache was asked %q", got)
	}
	for _, host := range []string{"127.0.0.1:37515", "localhost:37515", "[::1]:37515", "127.0.0.1"} {
		req, _ := http.NewRequest("GET", f.url+"/"+storeHash(1)+".narinfo", nil)
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Errorf("Host %q: %s, want 200", host, resp.Status)
		}
	}
}

// A web page's request to 127.0.0.1 (no rebinding needed: it cannot read
// the answer, but could make the substituter fetch) is refused before the
// cache hears of it.
func TestRefusesBrowsersRequests(t *testing.T) {
	f := newFixture(t, Options{})
	f.cache.addPath(1, 10)
	for _, h := range [][2]string{{"Origin", "https://attacker.example"}, {"Sec-Fetch-Site", "cross-site"}} {
		req, err := http.NewRequest("GET", f.url+"/"+storeHash(1)+".narinfo", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set(h[0], h[1])
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("%s: %s, want 403", h[0], resp.Status)
		}
	}
	if got := f.cache.files.requests(); len(got) != 0 {
		t.Errorf("the cache was asked %q", got)
	}
}
