//go:build harness

package integration_test

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nixcache/nixcache/internal/audit"
)

// A push key sends the whole upload, then drops the connection before the
// answer: serve's request to the publisher is cancelled (and serve itself
// dies of SIGPIPE writing to the closed channel, before its audit record).
// The daemon has the whole NAR and makes the path valid, signed by the cache
// key; the publisher, its context cancelled, neither rooted nor logged it:
// an upload in no audit line and under no ROOTS/pushed/NAME, which is all a
// stolen key's cleanup has to go on. The publisher finishes an import whose
// NAR it has, and writes the upload's record itself.
func TestAttackUploadThenHangUpIsRootedAndLogged(t *testing.T) {
	tp := startPublisher(t, publisherOptions{})
	for i := range 12 {
		p := newTestPath(t)
		body := p.body()
		c, err := net.Dial("unix", tp.socket)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "PUT /upload/%s HTTP/1.1\r\nHost: publisher\r\nNixcache-Client: builder\r\nNixcache-Key: %s\r\nContent-Length: %d\r\n\r\n",
			p.hash(), tp.keys["builder"], len(body))
		before := tp.inflight.Load()
		c.Write(body)
		// Hang up, after a moment that varies (0 to 11 ms): the body is
		// in the socket, the import under way or done.
		time.Sleep(time.Duration(i) * time.Millisecond)
		c.Close()
		// The handler started (it may have ended, too: then the record
		// or the path is there), then ended.
		for deadline := time.Now().Add(5 * time.Second); tp.inflight.Load() == before && time.Now().Before(deadline); {
			if ok, _ := dial(t).IsValidPath(p.path); ok {
				break
			}
			time.Sleep(time.Millisecond)
		}
		tp.settle()

		var rec *audit.Record
		sc := bufio.NewScanner(bytes.NewReader(tp.audit.Bytes()))
		for sc.Scan() {
			r, err := audit.Decode(sc.Bytes())
			if err != nil {
				t.Fatalf("audit line %q: %v", sc.Text(), err)
			}
			if r.Path == p.path {
				rec = &r
			}
		}
		valid, err := dial(t).IsValidPath(p.path)
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("hang-up %d: valid %v, record %+v", i, valid, rec)
		// The publisher logs what changed the server (serve, the
		// rest): a valid path must have its record.
		if rec == nil {
			if valid {
				t.Errorf("%s is valid and in no audit record", p.path)
			}
			continue
		}
		if rec.Op != audit.OpUpload || rec.Client != "builder" || rec.Key != tp.keys["builder"] || rec.Role != "push" ||
			rec.Bytes != int64(len(body)) {
			t.Errorf("the upload's record %+v", rec)
		}
		if valid {
			if rec.Status != http.StatusCreated {
				t.Errorf("%s is valid, and its record says %d", p.path, rec.Status)
			}
			link := filepath.Join(tp.roots, "pushed", "builder", filepath.Base(p.path))
			if target, err := os.Readlink(link); err != nil || target != p.path {
				t.Errorf("%s is valid and not rooted: %v", p.path, err)
			}
		} else if rec.Status == http.StatusCreated {
			t.Errorf("%s is logged as created and is not valid", p.path)
		}
	}
}
