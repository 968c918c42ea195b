package daemon

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/wire"
)

// encode lays fields out as the daemon sends them: ints and bools as
// uint64s, strings padded, string lists counted.
func encode(fields ...any) []byte {
	var b bytes.Buffer
	for _, f := range fields {
		switch v := f.(type) {
		case int:
			wire.WriteUint64(&b, uint64(v))
		case uint64:
			wire.WriteUint64(&b, v)
		case bool:
			wire.WriteBool(&b, v)
		case string:
			wire.WriteString(&b, v)
		case []string:
			wire.WriteUint64(&b, uint64(len(v)))
			for _, s := range v {
				wire.WriteString(&b, s)
			}
		default:
			panic(fmt.Sprintf("cannot encode %T", f))
		}
	}
	return b.Bytes()
}

// replay is the daemon's end of a connection that says data and ignores
// what it is told.
type replay struct{ io.Reader }

func (replay) Write(p []byte) (int, error) { return len(p), nil }
func (replay) Close() error                { return nil }

// allocBound is what decoding len bytes may allocate: a multiple of the
// input, plus the Conn's buffers and the runtime's noise.
func allocBound(n int) uint64 { return 64*uint64(n) + 1<<20 }

// The kinds of reply FuzzReplies decodes, one kind per input.
const (
	replyPathInfo = iota
	replyStrings
	replyBool
	replyKinds
)

// FuzzReplies feeds arbitrary bytes as the daemon's replies on a connection
// past its handshake, decoding replies of one kind until the connection
// fails, as a pipelined batch would.
func FuzzReplies(f *testing.F) {
	info := []any{true, "/nix/store/dddddddddddddddddddddddddddddddd-x.drv", strings.Repeat("ab", 32),
		[]string{"/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-a"}, 1700000000, 4242, true, []string{"k:sig"}, ""}
	activity := []any{stderrStartActivity, 7, 3, 105, "copying \x1b[1mpath\x1b[0m", []string{}, 0,
		stderrResult, 7, 101, 2, 0, 5, 1, "text", stderrStopActivity, 7}
	f.Add(uint8(37), uint8(replyPathInfo), encode(append(append([]any{stderrLast}, info...), stderrLast, false)...))
	f.Add(uint8(34), uint8(replyPathInfo), encode(append(append(activity, stderrLast), info...)...))
	f.Add(uint8(37), uint8(replyStrings), encode(stderrNext, "log\n", stderrLast, []string{"/nix/store/a", "/nix/store/b"}))
	f.Add(uint8(37), uint8(replyStrings), encode(stderrLast, 50<<20-1))
	f.Add(uint8(37), uint8(replyBool), encode(stderrError, "Error", 0, "Error", "error: no", 0, 1, 0, "while", stderrLast, true))
	f.Add(uint8(21), uint8(replyBool), encode(stderrError, "error: no", 1, stderrWrite, "x", stderrLast, 1))
	f.Add(uint8(37), uint8(replyBool), encode(stderrNext, 1<<20))
	f.Fuzz(func(t *testing.T, minor, kind uint8, data []byte) {
		c := newConn(replay{bytes.NewReader(data)})
		c.version = v(MinVersion.Minor() + uint64(minor)%(ClientVersion.Minor()-MinVersion.Minor()+1))
		kept := 0
		c.Log = func(s string) { kept += len(s) }
		var err error
		replies := 0
		alloc := allocatedBy(func() {
			for !isFatal(err) {
				replies++
				err = c.readReply(func() error {
					switch kind % replyKinds {
					case replyPathInfo:
						info, err := c.readPathInfoReply("/nix/store/x")
						if err == nil {
							if len(info.NarHash) != 32 {
								t.Errorf("NAR hash of %d bytes", len(info.NarHash))
							}
							kept += len(info.Deriver) + len(info.CA)
							for _, s := range append(info.References, info.Sigs...) {
								kept += len(s)
							}
						}
						return err
					case replyStrings:
						ss, err := c.readStrings()
						for _, s := range ss {
							kept += len(s)
						}
						return err
					default:
						_, err := c.readBool()
						return err
					}
				})
				var re *RemoteError
				if errors.As(err, &re) {
					kept += len(re.Message)
				}
			}
		})
		// Every reply reads at least its 8-byte stderr message.
		if replies > len(data)/8+1 {
			t.Errorf("%d replies decoded from %d bytes", replies, len(data))
		}
		if kept > len(data) {
			t.Errorf("%d bytes of strings decoded from %d bytes", kept, len(data))
		}
		if alloc > allocBound(len(data)) {
			t.Errorf("decoding %d bytes allocated %d", len(data), alloc)
		}
		if !errors.As(err, new(*ProtocolError)) {
			t.Errorf("the connection failed with %v (%T), want a protocol error", err, err)
		}
	})
}

// FuzzHandshake feeds arbitrary bytes as the daemon's side of the handshake.
func FuzzHandshake(f *testing.F) {
	f.Add(encode(workerMagic2, uint64(v(21)), stderrLast))
	f.Add(encode(workerMagic2, uint64(v(34)), "2.8.1", stderrNext, "hello\n", stderrLast))
	f.Add(encode(workerMagic2, uint64(v(38)), "2.24.9", 1, stderrLast))
	f.Add(encode(workerMagic2, uint64(v(35)), "Lix", 3, stderrLast))
	f.Add(encode(workerMagic2, uint64(v(35)), 1<<20))
	f.Add(encode(serveMagic2, 2<<8|6))
	f.Fuzz(func(t *testing.T, data []byte) {
		var c *Conn
		var err error
		alloc := allocatedBy(func() {
			c = newConn(replay{bytes.NewReader(data)})
			err = c.handshake()
		})
		if alloc > allocBound(len(data)) {
			t.Errorf("a handshake of %d bytes allocated %d", len(data), alloc)
		}
		if err != nil {
			return
		}
		if c.DaemonVersion < MinVersion || c.DaemonVersion.Major() != ClientVersion.Major() ||
			c.Version() != min(c.DaemonVersion, ClientVersion) {
			t.Errorf("accepted daemon %s, negotiated %s", c.DaemonVersion, c.Version())
		}
		if len(c.DaemonNixVersion) > len(data) {
			t.Errorf("Nix version of %d bytes from %d", len(c.DaemonNixVersion), len(data))
		}
		if c.Trust != TrustUnknown && c.Version().Minor() < 35 {
			t.Errorf("trust %s before protocol 1.35", c.Trust)
		}
	})
}

// FuzzServeGreeting feeds arbitrary bytes as what `nix-store --serve`
// answers to the client's greeting.
func FuzzServeGreeting(f *testing.F) {
	f.Add(encode(serveMagic2, 2<<8|7))
	f.Add(encode(serveMagic2, 3<<8|0))
	f.Add(encode(workerMagic2, uint64(v(34))))
	f.Add([]byte("Welcome to the server\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		var ver Version
		var err error
		alloc := allocatedBy(func() { ver, err = readServeGreeting(r) })
		if alloc > allocBound(len(data)) {
			t.Errorf("a greeting of %d bytes allocated %d", len(data), alloc)
		}
		if err != nil {
			return
		}
		if read := len(data) - r.Len(); read != 16 {
			t.Errorf("a greeting of %d bytes, want 16", read)
		}
		if !bytes.Equal(data[:8], encode(serveMagic2)) || ver.Major() != 2 || uint64(ver)>>16 != 0 {
			t.Errorf("accepted %x as protocol %s", data[:16], ver)
		}
	})
}
