package sshconf

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Target is the cache account a client's daemon logs in to.
type Target struct {
	User, Host string
	Port       int
}

// Addr is host:port, for dialing.
func (t Target) Addr() string { return net.JoinHostPort(t.Host, strconv.Itoa(t.Port)) }

// KnownHostsName is how ssh looks the host up in known_hosts: "host" on
// port 22, "[host]:port" otherwise.
func (t Target) KnownHostsName() string { return knownhosts.Normalize(t.Addr()) }

func (t Target) String() string { return t.User + "@" + t.Addr() }

// ParseHostKey reads a host key given as "TYPE BASE64 [COMMENT]" (a .pub
// file, or a line of ssh-keyscan without its host) or as a known_hosts line.
func ParseHostKey(line string) (ssh.PublicKey, error) {
	line = strings.TrimSpace(line)
	if k, _, _, _, err := ssh.ParseAuthorizedKey([]byte(line)); err == nil {
		return k, nil
	}
	if _, _, k, _, _, err := ssh.ParseKnownHosts([]byte(line)); err == nil {
		return k, nil
	}
	return nil, errors.New(`not an ssh public key: give the server's host key as "ssh-ed25519 AAAA..." (the content of /etc/ssh/ssh_host_ed25519_key.pub) or as a known_hosts line`)
}

// hostKeyAlgorithms are tried one at a time, so that every key the server
// has can be seen; ssh prefers them in this order.
var hostKeyAlgorithms = []string{
	ssh.KeyAlgoED25519,
	ssh.KeyAlgoECDSA256, ssh.KeyAlgoECDSA384, ssh.KeyAlgoECDSA521,
	ssh.KeyAlgoRSASHA512,
}

// errGotKey ends a handshake once the host key is known: nothing is
// authenticated and no account is named.
var errGotKey = errors.New("host key received")

// FetchHostKeys asks the server at addr for each kind of host key it has,
// most preferred first. It only handshakes: it logs in to nothing.
func FetchHostKeys(ctx context.Context, addr string) ([]ssh.PublicKey, error) {
	var keys []ssh.PublicKey
	for _, algo := range hostKeyAlgorithms {
		k, err := fetchHostKey(ctx, addr, algo)
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
				return nil, err
			}
			if errors.Is(err, errNoCommonAlgorithm) {
				continue
			}
			return nil, err
		}
		keys = append(keys, k)
	}
	if len(keys) == 0 {
		return nil, fmt.Errorf("%s offered no host key nixcache knows (ed25519, ecdsa, rsa)", addr)
	}
	return keys, nil
}

var errNoCommonAlgorithm = errors.New("no common host key algorithm")

func fetchHostKey(ctx context.Context, addr, algo string) (ssh.PublicKey, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	defer nc.Close()
	if dl, ok := ctx.Deadline(); ok {
		nc.SetDeadline(dl)
	}
	var got ssh.PublicKey
	cfg := &ssh.ClientConfig{
		User:              "nixcache-host-key-probe",
		HostKeyAlgorithms: []string{algo},
		HostKeyCallback: func(_ string, _ net.Addr, k ssh.PublicKey) error {
			got = k
			return errGotKey
		},
	}
	_, _, _, err = ssh.NewClientConn(nc, addr, cfg)
	if got != nil {
		return got, nil
	}
	if err != nil && strings.Contains(err.Error(), "no common algorithm for host key") {
		return nil, errNoCommonAlgorithm
	}
	if ctx.Err() != nil {
		return nil, fmt.Errorf("no ssh handshake with %s within 10s: %w", addr, ctx.Err())
	}
	if err == nil {
		err = errors.New("the server sent no host key")
	}
	return nil, fmt.Errorf("ssh handshake with %s: %w", addr, err)
}

// CheckFingerprint accepts a host key fingerprint as ssh-keygen -l prints
// it, and nothing else: "SHA256:" and 43 characters of unpadded base64
// (a SHA-256 sum).
func CheckFingerprint(s string) error {
	b64, ok := strings.CutPrefix(s, "SHA256:")
	if ok && len(b64) == 43 {
		// Strict: one spelling per sum. The decoder skips line breaks,
		// which then leave it short of 32 bytes.
		if raw, err := base64.RawStdEncoding.Strict().DecodeString(b64); err == nil && len(raw) == sha256.Size {
			return nil
		}
	}
	return errors.New(`not a SHA256 fingerprint: give it as ssh-keygen -lf prints it, "SHA256:" and 43 characters`)
}

// Fingerprint is the key's SHA256 fingerprint, as ssh prints it.
func Fingerprint(k ssh.PublicKey) string { return ssh.FingerprintSHA256(k) }

// SameKey reports whether a and b are the same key.
func SameKey(a, b ssh.PublicKey) bool {
	return a.Type() == b.Type() && bytes.Equal(a.Marshal(), b.Marshal())
}

// HostKeyChanged says a server presents a key other than the pinned one:
// either the server was reinstalled, or someone is in the middle.
type HostKeyChanged struct {
	Target    Target
	Pinned    ssh.PublicKey
	Presented []ssh.PublicKey
}

func (e *HostKeyChanged) Error() string {
	var fps []string
	for _, k := range e.Presented {
		fps = append(fps, Fingerprint(k))
	}
	return fmt.Sprintf("host key of %s has changed: pinned %s, server presents %s",
		e.Target.Addr(), Fingerprint(e.Pinned), strings.Join(fps, ", "))
}

// CheckPinned asks the server for its key of the pinned key's kind, as ssh
// will, and fails with *HostKeyChanged unless it is the pinned key.
func CheckPinned(ctx context.Context, t Target, pinned ssh.PublicKey) error {
	algo := pinned.Type()
	if algo == ssh.KeyAlgoRSA {
		algo = ssh.KeyAlgoRSASHA512 // the same key, signed with SHA-512
	}
	k, err := fetchHostKey(ctx, t.Addr(), algo)
	if errors.Is(err, errNoCommonAlgorithm) {
		// The server no longer has a key of that kind at all.
		keys, ferr := FetchHostKeys(ctx, t.Addr())
		if ferr != nil {
			return ferr
		}
		return &HostKeyChanged{t, pinned, keys}
	}
	if err != nil {
		return err
	}
	if !SameKey(k, pinned) {
		return &HostKeyChanged{t, pinned, []ssh.PublicKey{k}}
	}
	return nil
}

// Pinned returns the key pinned for t in the known_hosts file, or nil.
func Pinned(file string, t Target) (ssh.PublicKey, error) {
	data, err := os.ReadFile(file)
	if IsNotExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	name := t.KnownHostsName()
	for i, line := range lines(data) {
		if strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		_, hosts, k, _, _, err := ssh.ParseKnownHosts([]byte(line))
		if err != nil {
			return nil, fmt.Errorf("%q line %d: %v", file, i+1, err)
		}
		for _, h := range hosts {
			if h == name {
				return k, nil
			}
		}
	}
	return nil, nil
}

// Pin returns the known_hosts contents with t's line set to key: the line
// for t is replaced in place, or added at the end; other lines stay.
func Pin(existing []byte, t Target, key ssh.PublicKey) []byte {
	name := t.KnownHostsName()
	entry := knownhosts.Line([]string{name}, key)
	var out []string
	found := false
	for _, line := range lines(existing) {
		if _, hosts, _, _, _, err := ssh.ParseKnownHosts([]byte(line)); err == nil && len(hosts) == 1 && hosts[0] == name {
			if !found {
				out = append(out, entry)
			}
			found = true
			continue
		}
		out = append(out, line)
	}
	if !found {
		out = append(out, entry)
	}
	return []byte(strings.Join(out, "\n") + "\n")
}

// lines splits a file into lines without their endings; a missing final
// newline does not add an empty line. Unlike a bufio.Scanner it has no line
// length limit, past which a rewrite would silently drop the rest.
func lines(data []byte) []string {
	s := strings.TrimSuffix(string(data), "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}
