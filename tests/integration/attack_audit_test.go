//go:build harness

package integration_test

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/nixcache/nixcache/internal/audit"
	"github.com/nixcache/nixcache/internal/binarycache"
)

// A pull key asks the NAR batch endpoint in ways that were answered but not
// logged: a HEAD (which tells each NAR's size, so that it exists), and a
// batch with a name that is no NAR name. Every request is one line in the
// audit log (docs/uploads.md), and a batch is one per NAR.
func TestAttackNarBatchesAreAlwaysAudited(t *testing.T) {
	cl, err := env.Build(1)
	if err != nil {
		t.Fatal(err)
	}
	var recs []audit.Record
	h := cacheHandler(t)
	h.Audit = func(r audit.Record) { recs = append(recs, r) }
	srv := httptest.NewServer(h)
	defer srv.Close()
	nar := strings.TrimPrefix(field(get(t, srv.URL+"/"+hashOf(cl.Top)+".narinfo", http.StatusOK), "URL"), "nar/")
	recs = nil

	req, err := http.NewRequest(http.MethodHead, srv.URL+binarycache.NarsPrefix+nar, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HEAD of a batch: %s", resp.Status)
	}
	if len(recs) != 1 || recs[0].Op != audit.OpNar || recs[0].Path != cl.Top {
		t.Errorf("HEAD of a batch of one NAR: records %+v, want one nar record for %s", recs, cl.Top)
	}

	recs = nil
	get(t, srv.URL+binarycache.NarsPrefix+nar+",not-a-nar-name", http.StatusNotFound)
	if len(recs) != 1 || recs[0].Op != audit.OpRefused || recs[0].Request != audit.OpNar || recs[0].Status != http.StatusNotFound {
		t.Errorf("a batch with a bad name: records %+v, want one refused nar record", recs)
	}
}
