package service

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Daemon is the running nix-daemon that listens on a socket.
type Daemon struct {
	PID     int
	Started time.Time
	// Env is the daemon's environment: NIX_CONF_DIR, NIX_SSHOPTS and the
	// like decide what it reads and how its ssh connects.
	Env map[string]string
}

// ErrNotFound says no nix-daemon process listens on the socket.
var ErrNotFound = errors.New("no nix-daemon process listens on the socket")

// FindDaemon finds the nix-daemon process that holds socket's listening
// end (not systemd, which also holds it under socket activation). It needs
// root to read other processes' descriptors.
func FindDaemon(socket string) (*Daemon, error) {
	inodes, err := listeningInodes(socket)
	if err != nil {
		return nil, err
	}
	procs, _ := filepath.Glob("/proc/[0-9]*")
	var best *Daemon
	for _, dir := range procs {
		comm, err := os.ReadFile(dir + "/comm")
		if err != nil || strings.TrimSpace(string(comm)) != "nix-daemon" {
			continue
		}
		if !holdsSocket(dir, inodes) {
			continue
		}
		pid, _ := strconv.Atoi(filepath.Base(dir))
		started, err := startTime(dir)
		if err != nil {
			continue
		}
		if best == nil || started.Before(best.Started) {
			best = &Daemon{PID: pid, Started: started, Env: environ(dir)}
		}
	}
	if best == nil {
		return nil, ErrNotFound
	}
	return best, nil
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

func holdsSocket(procDir string, inodes map[string]bool) bool {
	fds, err := os.ReadDir(procDir + "/fd")
	if err != nil {
		return false
	}
	for _, fd := range fds {
		if link, err := os.Readlink(procDir + "/fd/" + fd.Name()); err == nil && inodes[link] {
			return true
		}
	}
	return false
}

// clockTick is USER_HZ, 100 on every Linux architecture Nix runs on.
const clockTick = 100

// startTime is when the process started, to within a clock tick: its start
// in ticks since boot, and the boot time from the uptime (btime in
// /proc/stat has only whole seconds).
func startTime(procDir string) (time.Time, error) {
	stat, err := os.ReadFile(procDir + "/stat")
	if err != nil {
		return time.Time{}, err
	}
	// The command name may contain spaces; fields resume after its ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return time.Time{}, fmt.Errorf("%s/stat: unexpected format", procDir)
	}
	fs := strings.Fields(string(stat[i+1:]))
	if len(fs) < 20 {
		return time.Time{}, fmt.Errorf("%s/stat: unexpected format", procDir)
	}
	ticks, err := strconv.ParseUint(fs[19], 10, 64) // field 22, starttime
	if err != nil {
		return time.Time{}, err
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

func environ(procDir string) map[string]string {
	data, _ := os.ReadFile(procDir + "/environ")
	env := map[string]string{}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			env[k] = v
		}
	}
	return env
}
