package daemon

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// A daemon whose accept queue is full (Nix's is 5 deep) makes a
// non-blocking connect fail with EAGAIN at once: Dial waits for room, as a
// blocking connect would, until its context ends.
func TestDialWaitsForAFullAcceptQueue(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "socket")
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	if err := syscall.Bind(fd, &syscall.SockaddrUnix{Name: sock}); err != nil {
		t.Fatal(err)
	}
	// Backlog 0: one pending connection fills the queue; nothing accepts.
	if err := syscall.Listen(fd, 0); err != nil {
		t.Fatal(err)
	}
	var held []net.Conn
	defer func() {
		for _, c := range held {
			c.Close()
		}
	}()
	for {
		c, err := net.Dial("unix", sock)
		if errors.Is(err, syscall.EAGAIN) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, c)
		if len(held) > 16 {
			t.Fatal("the accept queue never filled")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err = Dial(ctx, sock)
	if errors.Is(err, syscall.EAGAIN) {
		t.Fatalf("Dial gave up on a full queue at once: %v", err)
	}
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) < 250*time.Millisecond {
		t.Fatalf("Dial returned %v after %v; want it to wait for room until its context ended", err, time.Since(start))
	}
}
