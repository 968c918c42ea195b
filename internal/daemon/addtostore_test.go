package daemon

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"strings"
	"testing"
)

// readFrames reads a framed NAR as Nix's FramedSource does, failing the
// test on a frame over 64 KiB. It stops at the empty frame (ended true)
// or when the client goes away.
func readFrames(t *testing.T, p *peer) (nar []byte, ended bool) {
	for {
		n, err := readU64(p)
		if err != nil {
			return nar, false
		}
		if n == 0 {
			return nar, true
		}
		if n > frameSize {
			t.Errorf("a frame of %d bytes", n)
		}
		buf := make([]byte, n)
		if _, err := io.ReadFull(p.r, buf); err != nil {
			return nar, false
		}
		nar = append(nar, buf...)
	}
}

func readU64(p *peer) (uint64, error) {
	var b [8]byte
	if _, err := io.ReadFull(p.r, b[:]); err != nil {
		return 0, err
	}
	var n uint64
	for i := 7; i >= 0; i-- {
		n = n<<8 | uint64(b[i])
	}
	return n, nil
}

func testNar(size int) ([]byte, *PathInfo) {
	nar := bytes.Repeat([]byte("nixcache"), size/8)
	h := sha256.Sum256(nar)
	return nar, &PathInfo{
		Path:       "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-up",
		Deriver:    "/nix/store/dddddddddddddddddddddddddddddddd-up.drv",
		NarHash:    h[:],
		References: []string{"/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-dep"},
		NarSize:    uint64(len(nar)),
		Sigs:       []string{"cache-1:c2ln"},
		// Claimed by the caller, never sent: the daemon's clock and
		// "built here" are not the uploader's to say.
		RegistrationTime: 1700000000,
		Ultimate:         true,
	}
}

func TestAddToStoreNarWire(t *testing.T) {
	nar, info := testNar(200 << 10)
	var logged []string
	c := fakeDaemon(t, v(34), func(p *peer, _ Version) {
		if op := p.u64(); op != opAddToStoreNar {
			t.Errorf("op %d", op)
		}
		if s := p.str(); s != info.Path {
			t.Errorf("path %q", s)
		}
		if s := p.str(); s != info.Deriver {
			t.Errorf("deriver %q", s)
		}
		if s := p.str(); s != hex.EncodeToString(info.NarHash) {
			t.Errorf("NAR hash %q, want base16 without a type", s)
		}
		if refs := p.strs(); len(refs) != 1 || refs[0] != info.References[0] {
			t.Errorf("references %q", refs)
		}
		if rt := p.u64(); rt != 0 {
			t.Errorf("registration time %d, want 0", rt)
		}
		if n := p.u64(); n != info.NarSize {
			t.Errorf("NAR size %d", n)
		}
		if u := p.u64(); u != 0 {
			t.Errorf("ultimate %d, want false", u)
		}
		if sigs := p.strs(); len(sigs) != 1 || sigs[0] != info.Sigs[0] {
			t.Errorf("sigs %q", sigs)
		}
		if ca := p.str(); ca != "" {
			t.Errorf("ca %q", ca)
		}
		if repair, dontCheckSigs := p.u64(), p.u64(); repair != 0 || dontCheckSigs != 0 {
			t.Errorf("repair %d, dontCheckSigs %d; want both false", repair, dontCheckSigs)
		}
		// The daemon logs while it reads: the client must keep reading.
		p.send(stderrNext, strings.Repeat("x", 100<<10))
		got, ended := readFrames(t, p)
		if !ended || !bytes.Equal(got, nar) {
			t.Errorf("the daemon got %d bytes (ended %v), want the %d-byte NAR", len(got), ended, len(nar))
		}
		p.send(stderrLast)
		// The connection stays usable.
		if op := p.u64(); op != opIsValidPath {
			t.Errorf("next op %d", op)
		}
		p.str()
		p.send(stderrLast, true)
	})
	c.Log = func(s string) { logged = append(logged, s) }
	if err := c.AddToStoreNar(info, bytes.NewReader(nar)); err != nil {
		t.Fatal(err)
	}
	if len(logged) != 1 {
		t.Errorf("logged %d lines", len(logged))
	}
	if ok, err := c.IsValidPath(info.Path); err != nil || !ok {
		t.Errorf("after the import: %v %v", ok, err)
	}
}

// A NAR that does not match its info never reaches the daemon whole: the
// last frame is held back, then the connection closed.
func TestAddToStoreNarHoldsBackAMismatch(t *testing.T) {
	nar, info := testNar(150 << 10)
	other := bytes.Clone(nar)
	other[len(other)-1] ^= 1
	for name, r := range map[string]io.Reader{
		"longer":  io.MultiReader(bytes.NewReader(nar), strings.NewReader("x")),
		"shorter": bytes.NewReader(nar[:len(nar)-1]),
		"hash":    bytes.NewReader(other),
		"cut":     io.MultiReader(bytes.NewReader(nar[:len(nar)-10]), iotestErrReader{}),
	} {
		t.Run(name, func(t *testing.T) {
			got := make(chan int, 1)
			c := fakeDaemon(t, v(34), func(p *peer, _ Version) {
				p.u64()
				p.str()
				p.str()
				p.str()
				p.strs()
				p.u64()
				p.u64()
				p.u64()
				p.strs()
				p.str()
				p.u64()
				p.u64()
				nar, ended := readFrames(t, p)
				if ended {
					t.Error("the client ended the NAR")
				}
				got <- len(nar)
			})
			err := c.AddToStoreNar(info, r)
			var mismatch *NarMismatchError
			var readErr *NarReadError
			if name == "cut" && !errors.As(err, &readErr) || name != "cut" && !errors.As(err, &mismatch) {
				t.Fatalf("error %v (%T)", err, err)
			}
			if n := <-got; uint64(n) >= info.NarSize {
				t.Errorf("the daemon got %d of %d bytes", n, info.NarSize)
			}
		})
	}
}

type iotestErrReader struct{}

func (iotestErrReader) Read([]byte) (int, error) { return 0, io.ErrUnexpectedEOF }

func TestAddToStoreNarNeedsFramedProtocol(t *testing.T) {
	nar, info := testNar(64)
	c := fakeDaemon(t, v(21), func(*peer, Version) {})
	if err := c.AddToStoreNar(info, bytes.NewReader(nar)); !errors.Is(err, ErrNoFramedNar) {
		t.Errorf("Nix 2.3's daemon: %v", err)
	}
}
