package audit

import (
	"bufio"
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const testKey = "SHA256:uNiVztksCsDhcc0u9e8BujQXVUpKZIDTMczCvj3tD2s"

func record() Record {
	return Record{
		Time:     time.Date(2026, 11, 29, 5, 40, 0, 123e6, time.UTC),
		Client:   "build-01",
		Key:      testKey,
		Role:     "push",
		Op:       OpUpload,
		Path:     "/nix/store/0c1q3ad1bh7fz3vv0vq5gxlgbb5y3w3r-hello-2.12",
		Bytes:    1234,
		Status:   201,
		Duration: 12.5,
	}
}

// countingWriter records each Write call.
type countingWriter struct {
	mu     sync.Mutex
	writes [][]byte
}

func (c *countingWriter) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.writes = append(c.writes, bytes.Clone(p))
	return len(p), nil
}

func sameRecord(t *testing.T, got, want Record) {
	t.Helper()
	if !got.Time.Equal(want.Time) {
		t.Errorf("time %v, want %v", got.Time, want.Time)
	}
	got.Time, want.Time = time.Time{}, time.Time{}
	if got != want {
		t.Errorf("read back %+v, want %+v", got, want)
	}
}

// A record is one line, written in one call, and reads back the same.
func TestWriteIsOneLineInOneWrite(t *testing.T) {
	var out countingWriter
	w := NewWriter(&out)
	want := record()
	want.Time = want.Time.In(time.FixedZone("CET", 3600))
	if err := w.Write(want); err != nil {
		t.Fatal(err)
	}
	if len(out.writes) != 1 {
		t.Fatalf("%d writes, want 1", len(out.writes))
	}
	line := out.writes[0]
	if bytes.Count(line, []byte("\n")) != 1 || line[len(line)-1] != '\n' {
		t.Fatalf("not one line: %q", line)
	}
	if !bytes.Contains(line, []byte(`"time":"2026-11-29T05:40:00.123Z"`)) {
		t.Errorf("time is not in UTC: %s", line)
	}
	got, err := Decode(line)
	if err != nil {
		t.Fatal(err)
	}
	sameRecord(t, got, want)
}

// No string in a record can end its line and start a forged one.
func TestWriteNeverBreaksTheLine(t *testing.T) {
	var out bytes.Buffer
	w := NewWriter(&out)
	want := record()
	forged := "\n" + `{"time":"2026-11-29T05:40:00Z","client":"other","op":"upload"}` + "\r\n\u2028\u2029\x00\x1b[2J"
	want.Path += forged
	want.Request = forged
	want.Client = "x" + forged
	if err := w.Write(want); err != nil {
		t.Fatal(err)
	}
	line := out.Bytes()
	if i := bytes.IndexAny(line, "\n\r"); i != len(line)-1 {
		t.Fatalf("a line break inside the line at %d: %q", i, line)
	}
	if bytes.ContainsAny(line, "\x00\x1b\u2028\u2029") {
		t.Errorf("control characters written raw: %q", line)
	}
	got, err := Decode(line)
	if err != nil {
		t.Fatal(err)
	}
	sameRecord(t, got, want)
}

// Oversized or wrong records are refused whole, and nothing is written.
func TestWriteRefusesBadRecords(t *testing.T) {
	for name, change := range map[string]func(*Record){
		"no time":          func(r *Record) { r.Time = time.Time{} },
		"no op":            func(r *Record) { r.Op = "" },
		"unknown op":       func(r *Record) { r.Op = "delete" },
		"long client":      func(r *Record) { r.Client = strings.Repeat("c", maxClient+1) },
		"long role":        func(r *Record) { r.Role = strings.Repeat("r", maxRole+1) },
		"long request":     func(r *Record) { r.Request = strings.Repeat("q", maxRequest+1) },
		"long path":        func(r *Record) { r.Path = "/nix/store/" + strings.Repeat("p", maxPath) },
		"public key":       func(r *Record) { r.Key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm9lXbFmK6yM2hX4fJ0n8v3QmE" },
		"long fingerprint": func(r *Record) { r.Key = testKey + "A" },
		"invalid utf-8":    func(r *Record) { r.Path = "/nix/store/\xff" },
		"negative bytes":   func(r *Record) { r.Bytes = -1 },
		"status":           func(r *Record) { r.Status = 1000 },
		"NaN duration":     func(r *Record) { r.Duration = nan() },
		"year 10000":       func(r *Record) { r.Time = time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC) },
	} {
		t.Run(name, func(t *testing.T) {
			var out countingWriter
			r := record()
			change(&r)
			if err := NewWriter(&out).Write(r); err == nil {
				t.Fatal("written")
			}
			if len(out.writes) != 0 {
				t.Errorf("wrote %q", out.writes)
			}
		})
	}
}

func nan() float64 { z := 0.0; return z / z }

// The largest record, all control characters (six bytes each in JSON),
// still fits a line that Summarise reads.
func TestLargestRecordFitsALine(t *testing.T) {
	r := record()
	r.Client = strings.Repeat("\x01", maxClient)
	r.Role = strings.Repeat("\x01", maxRole)
	r.Request = strings.Repeat("\x01", maxRequest)
	r.Path = strings.Repeat("\x01", maxPath)
	line, err := Marshal(r)
	if err != nil {
		t.Fatal(err)
	}
	sums, skipped, err := Summarise(bytes.NewReader(line), Filter{})
	if err != nil || skipped.Lines != 0 || len(sums) != 1 {
		t.Fatalf("%d bytes: %v, %v, %v", len(line), sums, skipped, err)
	}
}

// Records written at once from many goroutines to the file are whole lines.
func TestConcurrentWritesToTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	w, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// A second writer on the same file, as after a restart: O_APPEND keeps
	// both whole.
	w2, err := OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const n, each = 16, 200
	var wg sync.WaitGroup
	for g := range n {
		wg.Go(func() {
			r := record()
			r.Path = "/nix/store/" + strings.Repeat("x", 3000) // lines larger than PIPE_BUF
			for i := range each {
				r.Bytes = int64(g*each + i)
				out := w
				if g%2 == 1 {
					out = w2
				}
				if err := out.Write(r); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	for _, c := range []*Writer{w, w2} {
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, MaxLine)
	seen := map[int64]bool{}
	for sc.Scan() {
		r, err := Decode(sc.Bytes())
		if err != nil {
			t.Fatalf("line %d: %v", len(seen)+1, err)
		}
		seen[r.Bytes] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(seen) != n*each {
		t.Errorf("%d distinct records, want %d", len(seen), n*each)
	}
}

// OpenFile makes the log 0640 whatever the umask, appends to what is there,
// and refuses a symlink, a FIFO (without hanging) and a world-writable file.
func TestOpenFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")

	old := syscall.Umask(0o077)
	w, err := OpenFile(path)
	syscall.Umask(old)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(record()); err != nil {
		t.Fatal(err)
	}
	w.Close()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if st.Mode().Perm() != 0o640 {
		t.Errorf("mode %04o, want 0640", st.Mode().Perm())
	}

	w, err = OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(record()); err != nil {
		t.Fatal(err)
	}
	w.Close()
	data, _ := os.ReadFile(path)
	if n := bytes.Count(data, []byte("\n")); n != 2 {
		t.Errorf("%d lines after a reopen, want 2 (appended)", n)
	}

	link := filepath.Join(dir, "link.log")
	if err := os.Symlink(path, link); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(link); err == nil || !strings.Contains(err.Error(), "symlink") {
		t.Errorf("a symlink: %v", err)
	}

	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := OpenFile(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("a FIFO was opened")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("opening a FIFO hangs")
	}

	open := filepath.Join(dir, "open.log")
	if err := os.WriteFile(open, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o662); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenFile(open); err == nil || !strings.Contains(err.Error(), "writable by every user") {
		t.Errorf("a world-writable log: %v", err)
	}
}

// A failed write is reported, not lost.
func TestWriteReportsErrors(t *testing.T) {
	w := NewWriter(failingWriter{})
	if err := w.Write(record()); err == nil || !errors.Is(err, syscall.ENOSPC) {
		t.Errorf("got %v, want ENOSPC", err)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, syscall.ENOSPC }
