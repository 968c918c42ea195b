//go:build harness

package substituter

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
)

// gatedListener holds back Accept until open is closed, as a substituter
// busy elsewhere would: the connections wait in the kernel's queue.
type gatedListener struct {
	net.Listener
	open chan struct{}
}

func (l *gatedListener) Accept() (net.Conn, error) {
	<-l.open
	return l.Listener.Accept()
}

// The attack: a local user sends a whole upload from port P and resets the
// connection at once (SO_LINGER 0), which frees its socket and the 4-tuple
// with it, while the request waits to be read. A root process then connects
// from the same port (any local user can steer the port a root process
// gets, by holding every other ephemeral port, and can make the Nix daemon
// connect to the substituter by asking it to substitute). The kernel's
// table then lists root's socket for the tuple the upload came from: the
// substituter must not take it for the uploader's.
func TestResetUploadIsNotTakenForRootsConnection(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test plays a local user and root: run it as root")
	}
	f := newFixture(t, Options{})
	rec := newUploadRecorder(f)
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l := &gatedListener{Listener: inner, open: make(chan struct{})}
	hs := &http.Server{Handler: f.srv, ConnContext: f.srv.ConnContext}
	go hs.Serve(l)
	t.Cleanup(func() { hs.Close() })
	addr := inner.Addr().String()

	// The local user's upload, whole, then a reset. It is zstd already, so
	// the substituter relays it as it reads it (a body it sampled first
	// would end the request before the relay began).
	nar := testNAR(200, 9)
	var body bytes.Buffer
	enc, _ := zstd.NewWriter(&body)
	enc.Write([]byte(nixNarinfo(2, nar, nar, nix32sha(nar)+".nar", "none") + "\n" + string(nar)))
	enc.Close()
	attacker, err := dialAs(nobody())(t.Context(), "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	port := attacker.LocalAddr().(*net.TCPAddr).Port
	fmt.Fprintf(attacker, "PUT %s%s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/octet-stream\r\nContent-Encoding: zstd\r\nContent-Length: %d\r\n\r\n%s",
		uploadPrefix, storeHash(2), addr, body.Len(), body.Bytes())
	attacker.(*net.TCPConn).SetLinger(0)
	attacker.Close()

	// Root's connection, from the same port, to the same address.
	d := net.Dialer{
		LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: port},
		Control: func(_, _ string, c syscall.RawConn) error {
			return c.Control(func(fd uintptr) { syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_REUSEADDR, 1) })
		},
	}
	root, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatalf("root's connection from port %d: %v", port, err)
	}
	defer root.Close()

	close(l.open)
	// The substituter reads the upload and answers it (to nobody).
	time.Sleep(time.Second)
	if n := f.cache.files.count("PUT"); n != 0 {
		t.Fatalf("the upload of a connection uid %d reset reached the cache as root's: %q (%d imported)", nobody(), f.cache.files.requests(), len(rec.recorded()))
	}
	if !strings.Contains(f.logs.String(), "upload from") {
		t.Errorf("the refusal was not logged; logs:\n%s", f.logs)
	}
}

// A server that does not pass its connections (http.Server.ConnContext)
// takes no upload, even from root: it could not tell a reset connection's.
func TestUploadsNeedTheConnection(t *testing.T) {
	f := newFixture(t, uploading(Options{}))
	hs := httptest.NewServer(f.srv)
	defer hs.Close()
	f.url = hs.URL
	code, msg := f.do(t, 0, "POST", missingPath, nil, []byte("/nix/store/"+storeHash(1)+"-p1\n"))
	if code != http.StatusForbidden || !strings.Contains(msg, "cannot tell who sent this upload") {
		t.Errorf("a missing query through a server without ConnContext: %d %q, want 403", code, msg)
	}
	if n := f.cache.files.count("POST"); n != 0 {
		t.Errorf("it reached the cache: %q", f.cache.files.requests())
	}
}

// On [::1], and from an IPv4-mapped address to a dual-stack socket, the
// kernel's tcp6 table says whose the connection is, as tcp does on
// 127.0.0.1.
func TestUploadUserOverIPv6(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test plays root and a local user: run it as root")
	}
	for _, listen := range []string{"[::1]:0", "[::]:0"} {
		t.Run(listen, func(t *testing.T) {
			f := newFixture(t, Options{})
			newUploadRecorder(f)
			l, err := net.Listen("tcp", listen)
			if err != nil {
				t.Fatal(err)
			}
			hs := &http.Server{Handler: f.srv, ConnContext: f.srv.ConnContext}
			go hs.Serve(l)
			t.Cleanup(func() { hs.Close() })
			port := l.Addr().(*net.TCPAddr).Port
			f.url = fmt.Sprintf("http://[::1]:%d", port)
			if listen == "[::]:0" {
				f.url = fmt.Sprintf("http://127.0.0.1:%d", port)
			}
			body := []byte("/nix/store/" + storeHash(1) + "-p1\n")
			if code, msg := f.do(t, nobody(), "POST", missingPath, nil, body); code != http.StatusForbidden {
				t.Errorf("uid %d over %s: %d %q, want 403", nobody(), f.url, code, msg)
			}
			if code, msg := f.do(t, 0, "POST", missingPath, nil, body); code != http.StatusOK {
				t.Errorf("root over %s: %d %q, want 200", f.url, code, msg)
			}
		})
	}
}
