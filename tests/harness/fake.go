package harness

import (
	"fmt"
	"io"
	"net"
	"os"
)

// FakeDaemonSocket, set in the environment of a test binary that imports
// the harness, makes it a fake nix-daemon instead: it listens on the socket
// the variable names, prints "listening as uid N" once it does, and accepts
// connections and closes them, as an impostor's program would. Tests of
// how nixcache finds the real daemon run it under the name nix-daemon
// (CopyTestBinary).
const FakeDaemonSocket = "NIXCACHE_TEST_FAKE_DAEMON_SOCKET"

func init() {
	if path := os.Getenv(FakeDaemonSocket); path != "" {
		fakeDaemon(path)
	}
}

func fakeDaemon(path string) {
	l, err := net.Listen("unix", path)
	if err != nil {
		fmt.Println("fake nix-daemon:", err)
		os.Exit(1)
	}
	fmt.Println("listening as uid", os.Getuid())
	for {
		c, err := l.Accept()
		if err != nil {
			os.Exit(1)
		}
		c.Close()
	}
}

// CopyTestBinary copies the running test binary to path, which must not
// exist, executable by everyone.
func CopyTestBinary(path string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	src, err := os.Open(self)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}
