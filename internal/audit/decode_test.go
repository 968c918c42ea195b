package audit

import (
	"bytes"
	"strings"
	"testing"
)

const goodLine = `{"time":"2026-11-29T05:40:00.123Z","client":"build-01","key":"` + testKey + `","role":"push","op":"upload","path":"/nix/store/0c1q3ad1bh7fz3vv0vq5gxlgbb5y3w3r-hello-2.12","bytes":1234,"status":201,"duration_ms":12.5}`

func TestDecodeReadsWhatWriteWrites(t *testing.T) {
	got, err := Decode([]byte(goodLine + "\n"))
	if err != nil {
		t.Fatal(err)
	}
	sameRecord(t, got, record())
	// Only time and op are required.
	if _, err := Decode([]byte(`{"time":"2026-11-29T05:40:00Z","op":"missing"}`)); err != nil {
		t.Error(err)
	}
}

// The publisher takes records from serve only in exactly the form Write
// produces: anything else is refused.
func TestDecodeIsStrict(t *testing.T) {
	for name, line := range map[string]string{
		"empty":            ``,
		"null":             `null`,
		"array":            `[` + goodLine + `]`,
		"unknown field":    strings.Replace(goodLine, `"role"`, `"admin":true,"role"`, 1),
		"field's case":     strings.Replace(goodLine, `"client"`, `"Client"`, 1),
		"field twice":      strings.Replace(goodLine, `"client":"build-01"`, `"client":"build-01","client":"other"`, 1),
		"trailing data":    goodLine + ` {}`,
		"trailing garbage": goodLine + `x`,
		"two records":      goodLine + "\n" + goodLine,
		"no time":          strings.Replace(goodLine, `"time":"2026-11-29T05:40:00.123Z",`, ``, 1),
		"no op":            strings.Replace(goodLine, `"op":"upload",`, ``, 1),
		"bad time":         strings.Replace(goodLine, `2026-11-29T05:40:00.123Z`, `yesterday`, 1),
		"unknown op":       strings.Replace(goodLine, `"upload"`, `"gc"`, 1),
		"a public key":     strings.Replace(goodLine, testKey, `ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHm9lXbFmK6yM2hX4fJ0n8v3QmE`, 1),
		"bytes overflow":   strings.Replace(goodLine, `1234`, `9223372036854775808`, 1),
		"bytes a string":   strings.Replace(goodLine, `1234`, `"1234"`, 1),
		"too long":         strings.Replace(goodLine, `hello`, strings.Repeat("h", MaxLine), 1),
		"path over limit":  strings.Replace(goodLine, `hello`, strings.Repeat("h", maxPath), 1),
		"unclosed":         strings.TrimSuffix(goodLine, `}`),
	} {
		t.Run(name, func(t *testing.T) {
			if r, err := Decode([]byte(line)); err == nil {
				t.Errorf("accepted: %+v", r)
			}
		})
	}
}

// Whatever Decode accepts, Write writes as one line that Decode reads back
// the same.
func FuzzDecode(f *testing.F) {
	f.Add([]byte(goodLine))
	f.Add([]byte(`{"time":"2026-11-29T05:40:00Z","op":"refused","request":"shell\n"}`))
	f.Add([]byte(`{"time":"0000-01-01T00:00:00+01:00","op":"nar"}`))
	f.Add([]byte(`{"time":"2026-11-29T05:40:00Z","op":"nar","path":"\u2028\u0000"}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := Decode(data)
		if err != nil {
			return
		}
		line, err := Marshal(r)
		if err != nil {
			t.Fatalf("decoded but not written: %v", err)
		}
		if bytes.IndexAny(line, "\n\r") != len(line)-1 {
			t.Fatalf("not one line: %q", line)
		}
		again, err := Decode(line)
		if err != nil {
			t.Fatalf("written but not decoded: %v: %q", err, line)
		}
		sameRecord(t, again, r)
	})
}
