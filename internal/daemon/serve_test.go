package daemon

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
)

// serveCommand is a stand-in for `ssh HOST nix-store --serve --write`: it
// reads the client's greeting and answers with reply, given as printf's
// octal escapes.
func serveCommand(reply string) []string {
	return []string{"sh", "-c", "head -c 16 >/dev/null; printf '" + reply + "'"}
}

// wireOctal spells uint64s as they go on the wire, in printf's escapes.
func wireOctal(ns ...uint64) string {
	var b strings.Builder
	for _, n := range ns {
		for i := range 8 {
			fmt.Fprintf(&b, "\\%03o", byte(n>>(8*i)))
		}
	}
	return b.String()
}

func TestServeHandshake(t *testing.T) {
	v, err := ServeHandshake(context.Background(), serveCommand(wireOctal(serveMagic2, 2<<8|7)), nil)
	if err != nil || v != 2<<8|7 {
		t.Fatalf("got %s, %v; want 2.7", v, err)
	}
}

// A program at the other end that is not Nix's serve protocol 2.x must not
// pass for one: doctor would report a working login.
func TestServeHandshakeRefusesOtherPrograms(t *testing.T) {
	for _, tc := range []struct{ name, reply string }{
		{"shell banner", "Welcome to the server\\n\\n\\n\\n\\n\\n"},
		{"worker protocol", wireOctal(workerMagic2, 1<<8|34)},
		{"serve protocol 3", wireOctal(serveMagic2, 3<<8|0)},
		{"serve version beyond a byte", wireOctal(serveMagic2, 1<<16|2<<8|6)},
		{"magic only", wireOctal(serveMagic2)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v, err := ServeHandshake(context.Background(), serveCommand(tc.reply), nil)
			var ce *CommandError
			if !errors.As(err, &ce) {
				t.Fatalf("got version %s, err %v; want a command error", v, err)
			}
		})
	}
}
