package audit

import (
	"bytes"
	"fmt"
	"io"
	"math"
	"strings"
	"testing"
	"time"
)

const otherKey = "SHA256:AAAAztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"

// A small log as the publisher writes it, with a line of the journal's own
// and a broken record in it.
var smallLog = strings.Join([]string{
	`{"time":"2026-11-28T10:00:00Z","client":"build-01","key":"` + testKey + `","role":"pull","op":"narinfo","path":"/nix/store/a","bytes":500,"status":200,"duration_ms":1}`,
	`{"time":"2026-11-28T10:00:01Z","client":"build-01","key":"` + testKey + `","role":"pull","op":"nar","path":"/nix/store/a","bytes":10000,"status":200,"duration_ms":3}`,
	`{"time":"2026-11-29T05:40:00Z","client":"build-01","key":"` + otherKey + `","role":"push","op":"upload","path":"/nix/store/b","bytes":2048,"status":201,"duration_ms":12.5}`,
	`{"time":"2026-11-29T05:41:00Z","client":"build-01","key":"` + otherKey + `","role":"push","op":"upload","path":"/nix/store/c","bytes":100,"status":422,"duration_ms":2}`,
	`nixcache: publisher listening on /run/nixcache/publisher.sock`,
	``,
	`{"time":"2026-11-29T05:00:00Z","client":"laptop","key":"` + testKey + `","role":"pull","op":"refused","request":"upload","bytes":0,"status":403,"duration_ms":0}`,
	`{"time":"2026-11-29T05:00:01Z","client":"laptop","role":"pull","op":"missing","bytes":73,"status":200,"duration_ms":0.5,"a_newer_field":1}`,
	`{"time":"2026-11-29T05:00:02Z","client":"laptop","op":`,
}, "\n") + "\n"

func TestSummarise(t *testing.T) {
	sums, skipped, err := Summarise(strings.NewReader(smallLog), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	want := []Summary{{
		Client: "build-01", Role: "push", Requests: 4, BytesSent: 10500, BytesReceived: 2148,
		Uploads: 1, Refusals: 1, LastSeen: time.Date(2026, 11, 29, 5, 41, 0, 0, time.UTC), Keys: []string{otherKey, testKey},
	}, {
		Client: "laptop", Role: "pull", Requests: 2, BytesSent: 73, Refusals: 1,
		LastSeen: time.Date(2026, 11, 29, 5, 0, 1, 0, time.UTC), Keys: []string{testKey},
	}}
	if got, exp := fmt.Sprintf("%+v", sums), fmt.Sprintf("%+v", want); got != exp {
		t.Errorf("got  %s\nwant %s", got, exp)
	}
	if skipped != (Skipped{Lines: 2, First: 5}) || skipped.String() != "2 lines skipped (first: line 5)" {
		t.Errorf("skipped %+v: %s", skipped, skipped)
	}
}

func TestSummariseFilters(t *testing.T) {
	sums, _, err := Summarise(strings.NewReader(smallLog), Filter{Since: time.Date(2026, 11, 29, 5, 30, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 1 || sums[0].Client != "build-01" || sums[0].Requests != 2 || sums[0].BytesSent != 0 || len(sums[0].Keys) != 1 {
		t.Errorf("since: %+v", sums)
	}
	sums, _, err = Summarise(strings.NewReader(smallLog), Filter{Client: "laptop"})
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 1 || sums[0].Client != "laptop" || sums[0].Requests != 2 {
		t.Errorf("client: %+v", sums)
	}
	sums, _, err = Summarise(strings.NewReader(smallLog), Filter{Client: "nobody"})
	if err != nil || len(sums) != 0 {
		t.Errorf("no such client: %+v, %v", sums, err)
	}
}

// Lines longer than MaxLine are skipped without holding them, and the next
// line is read; CRLF endings and a last line without one are fine.
func TestSummariseOddLines(t *testing.T) {
	one := `{"time":"2026-11-29T05:00:00Z","client":"a","op":"nar","bytes":1}`
	input := one + "\r\n" + strings.Repeat("x", 3*MaxLine) + "\n" + one + "\n" + strings.Repeat("{", MaxLine+1) + "\n" + one
	sums, skipped, err := Summarise(strings.NewReader(input), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != 1 || sums[0].Requests != 3 {
		t.Errorf("%+v", sums)
	}
	if skipped != (Skipped{Lines: 2, First: 2}) {
		t.Errorf("skipped %+v", skipped)
	}
	sums, skipped, err = Summarise(strings.NewReader(""), Filter{})
	if err != nil || len(sums) != 0 || skipped.Lines != 0 {
		t.Errorf("empty: %+v %+v %v", sums, skipped, err)
	}
	if (Skipped{Lines: 1, First: 3}).String() != "1 line skipped (line 3)" {
		t.Error(Skipped{Lines: 1, First: 3}.String())
	}
}

// Sums saturate rather than wrap.
func TestSummariseSaturates(t *testing.T) {
	line := fmt.Sprintf(`{"time":"2026-11-29T05:00:00Z","client":"a","op":"nar","bytes":%d}`+"\n", int64(math.MaxInt64))
	sums, _, err := Summarise(strings.NewReader(line+line), Filter{})
	if err != nil || sums[0].BytesSent != math.MaxInt64 {
		t.Errorf("%+v %v", sums, err)
	}
}

// repeatReader gives its chunk n times.
type repeatReader struct {
	chunk []byte
	n     int
	off   int
}

func (r *repeatReader) Read(p []byte) (int, error) {
	if r.n == 0 {
		return 0, io.EOF
	}
	c := copy(p, r.chunk[r.off:])
	r.off += c
	if r.off == len(r.chunk) {
		r.off = 0
		r.n--
	}
	return c, nil
}

// BenchmarkSummarise reads a log of 1,000,000 records from 50 clients.
func BenchmarkSummarise(b *testing.B) {
	var chunk bytes.Buffer
	ops := []string{OpNarinfo, OpNar, OpNar, OpUpload, OpMissing, OpRefused}
	base := time.Date(2026, 11, 29, 0, 0, 0, 0, time.UTC)
	for i := range 1000 {
		r := record()
		r.Client = fmt.Sprintf("build-%02d", i%50)
		r.Op = ops[i%len(ops)]
		r.Time = base.Add(time.Duration(i) * time.Second)
		line, err := Marshal(r)
		if err != nil {
			b.Fatal(err)
		}
		chunk.Write(line)
	}
	b.SetBytes(int64(chunk.Len()) * 1000)
	for b.Loop() {
		sums, skipped, err := Summarise(&repeatReader{chunk: chunk.Bytes(), n: 1000}, Filter{})
		if err != nil || len(sums) != 50 || skipped.Lines != 0 || sums[0].Requests != 20000 {
			b.Fatalf("%d summaries, %+v, %v", len(sums), skipped, err)
		}
	}
}
