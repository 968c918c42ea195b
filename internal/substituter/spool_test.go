package substituter

import (
	"bytes"
	"errors"
	"io"
	"os"
	"testing"
	"time"
)

// The spool reserves a NAR's size before fetching it, refuses what does not
// fit, and gives the room back once the NAR was read.
func TestSpoolBudget(t *testing.T) {
	s := newSpool(t.TempDir(), 100)
	a, err := s.reserve("a", 60)
	if err != nil || a == nil {
		t.Fatalf("reserve 60 of 100: %v %v", a, err)
	}
	if b, _ := s.reserve("b", 50); b != nil {
		t.Fatal("reserved 50 more with 40 left")
	}
	if again, _ := s.reserve("a", 10); again != nil {
		t.Fatal("reserved a NAR that is spooled already")
	}
	c, _ := s.reserve("c", 40)
	if c == nil {
		t.Fatal("40 did not fit in the 40 left")
	}
	s.write(a, bytes.NewReader(make([]byte, 60)))
	s.write(c, bytes.NewReader(make([]byte, 40)))
	_, r, err := s.claim("a")
	if err != nil || r == nil {
		t.Fatalf("claim: %v", err)
	}
	if n, err := io.Copy(io.Discard, r); n != 60 || err != nil {
		t.Fatalf("read %d bytes: %v", n, err)
	}
	if s.usedBytes() != 100 {
		t.Fatalf("used %d while the NAR is still being served", s.usedBytes())
	}
	r.Close()
	if s.usedBytes() != 40 {
		t.Fatalf("used %d after serving a, want 40", s.usedBytes())
	}
	if _, again, _ := s.claim("a"); again != nil {
		t.Fatal("a NAR was served from the spool twice")
	}
	// Unclaimed NARs give their room back after unclaimedTTL.
	s.now = func() time.Time { return time.Now().Add(unclaimedTTL + time.Second) }
	if d, _ := s.reserve("d", 100); d == nil {
		t.Fatal("an expired NAR kept its room")
	}
	entries, _ := os.ReadDir(s.dir)
	if len(entries) != 1 {
		t.Errorf("%d files in the spool, want 1 (d's)", len(entries))
	}
}

// A reader that claims a NAR while it downloads gets the bytes as they
// arrive, and an error (never a short success) if the download fails.
func TestSpoolFollowsTheWriter(t *testing.T) {
	s := newSpool(t.TempDir(), 1<<20)
	e, _ := s.reserve("n", 10)
	pr, pw := io.Pipe()
	go s.write(e, pr)
	_, r, err := s.claim("n")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	got := make(chan []byte)
	go func() {
		b := make([]byte, 10)
		n, _ := r.Read(b)
		got <- b[:n]
	}()
	pw.Write([]byte("abcd"))
	if b := <-got; string(b) != "abcd" {
		t.Fatalf("read %q while downloading", b)
	}
	broken := errors.New("connection lost")
	pw.Write([]byte("ef"))
	pw.CloseWithError(broken)
	rest, err := io.ReadAll(r)
	if string(rest) != "ef" || !errors.Is(err, broken) {
		t.Fatalf("after a broken download: %q, %v", rest, err)
	}
	// Short bodies are errors too.
	e, _ = s.reserve("short", 10)
	s.write(e, bytes.NewReader([]byte("abc")))
	if _, r, _ := s.claim("short"); r != nil {
		t.Fatal("a short download stayed in the spool")
	}
	if s.usedBytes() != 10 {
		t.Fatalf("used %d, want 10 (n, still held by its reader)", s.usedBytes())
	}
}
