package service

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/nixcache/nixcache/internal/daemon"
)

// FindDaemon identifies the nix-daemon that serves socket by what cannot be
// faked. A process's name, and the path /proc/net/unix shows for its socket,
// prove nothing: any user with a user and mount namespace of their own can
// mount a tmpfs over the socket's directory, listen on the same path from a
// program named nix-daemon, and put ssh options of their choosing in its
// environment. So FindDaemon connects to socket as a client does, through
// the caller's mount namespace (the daemon itself may run in another), and
// asks the kernel who listens: SO_PEERCRED gives the process that called
// listen(2), with its credentials at the time. That is the daemon, or under
// socket activation systemd, which hands the socket on; either way it must
// have been root. The daemon is then the nix-daemon holding that listening
// socket, and its environment is read only if it runs as root. It needs
// root to read the daemon's descriptors and environment.
func FindDaemon(socket string) (*Daemon, error) {
	cred, err := listener(socket)
	if err != nil {
		return nil, err
	}
	if cred.Uid != 0 {
		return nil, fmt.Errorf("%w: %q is served by PID %d, which listened as uid %d", ErrUntrusted, socket, cred.Pid, cred.Uid)
	}
	inodes, err := listeningInodes(socket)
	if err != nil {
		return nil, err
	}
	// Sockets bound to the same path in other mount namespaces look alike
	// in /proc/net/unix; the one the connection reached is the one the
	// listener holds. A listener that handed it on and exited holds none:
	// then any of them will do, as only root's processes are trusted below.
	if lp, err := openProcess(int(cred.Pid)); err == nil {
		held := lp.holding(inodes)
		if len(held) > 0 {
			inodes = held
		}
		d, err := lp.daemon(inodes)
		lp.close()
		if d != nil || err != nil {
			return d, err
		}
	}
	// Socket activation: systemd listened, and a nix-daemon holds the
	// socket it was given.
	procs, _ := filepath.Glob("/proc/[0-9]*")
	var best *Daemon
	var untrusted error
	for _, dir := range procs {
		pid, _ := strconv.Atoi(filepath.Base(dir))
		p, err := openProcess(pid)
		if err != nil {
			continue
		}
		d, err := p.daemon(inodes)
		p.close()
		switch {
		case errors.Is(err, ErrUntrusted):
			untrusted = err
		case d != nil && (best == nil || d.Started.Before(best.Started)):
			best = d
		}
	}
	if best == nil && untrusted != nil {
		return nil, untrusted
	}
	if best == nil {
		return nil, ErrNotFound
	}
	return best, nil
}

// listener connects to socket and returns the credentials of the process
// that listens on it, as they were when it called listen(2).
func listener(socket string) (*syscall.Ucred, error) {
	conn, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: socket, Net: "unix"})
	if errors.Is(err, syscall.ENOENT) || errors.Is(err, syscall.ECONNREFUSED) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	raw, err := conn.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *syscall.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	if credErr != nil {
		return nil, fmt.Errorf("asking who listens on %q: %w", socket, credErr)
	}
	// A connection that hangs up unannounced is an error in the daemon's
	// log; one that greets it and leaves is not. The answer does not
	// matter: the kernel has said who listens.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if c, err := daemon.Handshake(ctx, conn); err == nil {
		c.Close()
	}
	return cred, nil
}

// listeningInodes are the inodes of the listening unix sockets bound to path.
func listeningInodes(path string) (map[string]bool, error) {
	f, err := os.Open("/proc/net/unix")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	inodes := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// Num RefCount Protocol Flags Type St Inode Path
		fs := strings.Fields(sc.Text())
		if len(fs) == 8 && fs[7] == path && fs[3] == "00010000" {
			inodes["socket:["+fs[6]+"]"] = true
		}
	}
	if len(inodes) == 0 {
		return nil, ErrNotFound
	}
	return inodes, sc.Err()
}

// process reads one process's /proc entries through a descriptor for its
// directory: should the process end and its PID be reused meanwhile, reads
// fail rather than describe the newcomer.
type process struct {
	pid int
	dir *os.Root
}

func openProcess(pid int) (*process, error) {
	dir, err := os.OpenRoot("/proc/" + strconv.Itoa(pid))
	if err != nil {
		return nil, err
	}
	return &process{pid, dir}, nil
}

func (p *process) close() { p.dir.Close() }

// daemon is p as the daemon when it is a nix-daemon holding one of
// inodes: nil if it is not one, ErrUntrusted if it does not run as root.
func (p *process) daemon(inodes map[string]bool) (*Daemon, error) {
	comm, err := p.dir.ReadFile("comm")
	if err != nil || strings.TrimSpace(string(comm)) != "nix-daemon" || len(p.holding(inodes)) == 0 {
		return nil, nil
	}
	if err := p.runsAsRoot(); err != nil {
		return nil, err
	}
	started, err := p.started()
	if err != nil {
		return nil, err
	}
	env, err := p.environ()
	if err != nil {
		return nil, err
	}
	return &Daemon{PID: p.pid, Started: started, Env: env}, nil
}

// holding is those of inodes p holds a descriptor for.
func (p *process) holding(inodes map[string]bool) map[string]bool {
	fds, err := p.dir.Open("fd")
	if err != nil {
		return nil
	}
	defer fds.Close()
	names, _ := fds.Readdirnames(-1)
	held := map[string]bool{}
	for _, fd := range names {
		if link, err := p.dir.Readlink("fd/" + fd); err == nil && inodes[link] {
			held[link] = true
		}
	}
	return held
}

// runsAsRoot checks that all of p's user IDs are root's. /proc shows them
// as seen from the reader's user namespace, so root inside a user namespace
// of its own shows as the user it maps to.
func (p *process) runsAsRoot() error {
	status, err := p.dir.ReadFile("status")
	if err != nil {
		return err
	}
	for line := range strings.Lines(string(status)) {
		if ids, ok := strings.CutPrefix(line, "Uid:"); ok {
			// Real, effective, saved and filesystem: a set-user-ID
			// program run by a user has the user's real ID.
			for _, id := range strings.Fields(ids) {
				if id != "0" {
					return fmt.Errorf("%w: nix-daemon PID %d holds the socket but runs as uid %s", ErrUntrusted, p.pid, id)
				}
			}
			return nil
		}
	}
	return fmt.Errorf("/proc/%d/status: no Uid line", p.pid)
}

// clockTick is USER_HZ, 100 on every Linux architecture Nix runs on.
const clockTick = 100

// started is when the process started, to within a clock tick: its start
// in ticks since boot, and the boot time from the uptime (btime in
// /proc/stat has only whole seconds).
func (p *process) started() (time.Time, error) {
	stat, err := p.dir.ReadFile("stat")
	if err != nil {
		return time.Time{}, err
	}
	ticks, err := startTicks(stat)
	if err != nil {
		return time.Time{}, fmt.Errorf("/proc/%d/stat: %w", p.pid, err)
	}
	up, err := os.ReadFile("/proc/uptime")
	if err != nil {
		return time.Time{}, err
	}
	uptime, err := strconv.ParseFloat(strings.Fields(string(up))[0], 64)
	if err != nil {
		return time.Time{}, err
	}
	boot := time.Now().Add(-time.Duration(uptime * float64(time.Second)))
	return boot.Add(time.Duration(ticks) * time.Second / clockTick), nil
}

// startTicks is the start time field of a /proc/PID/stat line. The command
// name before it is the process's own choice, spaces, parentheses and
// line breaks included; the fields resume after its last ')'.
func startTicks(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, errors.New("unexpected format")
	}
	fs := strings.Fields(string(stat[i+1:]))
	if len(fs) < 20 {
		return 0, errors.New("unexpected format")
	}
	return strconv.ParseUint(fs[19], 10, 64) // field 22, starttime
}

func (p *process) environ() (map[string]string, error) {
	data, err := p.dir.ReadFile("environ")
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			env[k] = v
		}
	}
	return env, nil
}
