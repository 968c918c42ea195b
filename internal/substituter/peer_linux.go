package substituter

import (
	"bufio"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// peerUID is the uid that owns the client's end of a loopback TCP
// connection: its socket is the row of /proc/net/tcp (or tcp6) whose local
// address is the client's and whose remote address is ours. The kernel
// records a socket's owner when it is made, so a client cannot claim
// another's uid.
//
// Only a socket a process still holds counts (its inode is not 0): a client
// that sent its request and closed its socket at once leaves an orphan, or
// a time-wait entry, which the kernel lists with uid 0.
func peerUID(ours, theirs string) (uint32, error) {
	local, err := netip.ParseAddrPort(ours)
	if err != nil {
		return 0, fmt.Errorf("our address %q: %w", ours, err)
	}
	remote, err := netip.ParseAddrPort(theirs)
	if err != nil {
		return 0, fmt.Errorf("the client's address %q: %w", theirs, err)
	}
	local, remote = unmapped(local), unmapped(remote)
	for _, table := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		uid, found, err := findSocket(table, remote, local)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return 0, err
		}
		if found {
			return uid, nil
		}
	}
	return 0, fmt.Errorf("no socket of a running process is connected from %s to %s", remote, local)
}

func unmapped(a netip.AddrPort) netip.AddrPort {
	return netip.AddrPortFrom(a.Addr().Unmap(), a.Port())
}

// findSocket looks in one table for the live socket from local to remote.
func findSocket(table string, local, remote netip.AddrPort) (uint32, bool, error) {
	f, err := os.Open(table)
	if err != nil {
		return 0, false, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Scan() // the header
	for sc.Scan() {
		// sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...
		fields := strings.Fields(sc.Text())
		if len(fields) < 10 {
			continue
		}
		l, lerr := procAddr(fields[1])
		r, rerr := procAddr(fields[2])
		if lerr != nil || rerr != nil || l != local || r != remote {
			continue
		}
		if fields[9] == "0" {
			// An orphan or a time-wait entry: no process holds it.
			continue
		}
		if !peerStates[fields[3]] {
			// Not (or no longer) the other end of a connection we hold:
			// one still connecting, say, from an address pair that a
			// reset freed.
			continue
		}
		uid, err := strconv.ParseUint(fields[7], 10, 32)
		if err != nil {
			return 0, false, fmt.Errorf("%s: uid %q: %w", table, fields[7], err)
		}
		return uint32(uid), true, nil
	}
	return 0, false, sc.Err()
}

// peerStates are the states, as /proc/net/tcp prints them, of a client's
// socket while our end is connected: established, or closed for writing
// (FIN_WAIT1, FIN_WAIT2) after sending its request.
var peerStates = map[string]bool{"01": true, "04": true, "05": true}

// The kernel's TCP states (include/net/tcp_states.h), as TCP_INFO gives them.
const (
	tcpEstablished = 1
	tcpCloseWait   = 8
)

// stillConnected fails unless our end of c is still established, or closed
// by the client for writing only (CLOSE_WAIT). A socket leaves those states
// for good once reset or closed, and while it is in them no other socket can
// hold its peer's address pair.
func stillConnected(c net.Conn) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return fmt.Errorf("a %T is no socket", c)
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var info *unix.TCPInfo
	var infoErr error
	if err := raw.Control(func(fd uintptr) {
		info, infoErr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
	}); err != nil {
		return err
	}
	if infoErr != nil {
		return fmt.Errorf("the connection's state: %w", infoErr)
	}
	if info.State != tcpEstablished && info.State != tcpCloseWait {
		return fmt.Errorf("the connection was closed or reset (TCP state %d) before its request was read, so the socket listed for its addresses may be another's", info.State)
	}
	return nil
}

// procAddr reads an address as /proc/net/tcp prints it: the address's
// bytes as 32-bit words in host order, in hex, a colon, the port in hex.
func procAddr(s string) (netip.AddrPort, error) {
	h, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.AddrPort{}, errors.New("no port")
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.AddrPort{}, err
	}
	raw, err := hex.DecodeString(h)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.AddrPort{}, errors.New("bad address")
	}
	// Each word was printed as a host-order integer: writing it back in
	// host order gives the bytes as they were, in network order.
	b := make([]byte, len(raw))
	for i := 0; i < len(raw); i += 4 {
		binary.NativeEndian.PutUint32(b[i:], binary.BigEndian.Uint32(raw[i:]))
	}
	addr, _ := netip.AddrFromSlice(b)
	return netip.AddrPortFrom(addr.Unmap(), uint16(port)), nil
}
