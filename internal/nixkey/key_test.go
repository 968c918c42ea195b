package nixkey

import (
	"strings"
	"testing"

	"github.com/nix-community/go-nix/pkg/nixbase32"
)

// A real path from cache.nixos.org with its real signature: if the
// fingerprint were off by a byte, the signature would not verify.
const (
	nixosKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
	curlPath = "/nix/store/syd87l2rxw8cbsxmxl853h0r6pdwhwjr-curl-7.82.0-bin"
	curlHash = "1b4sb93wp679q4zx9k1ignby1yna3z7c4c2ri3wphylbc2dwsys0"
	curlSize = 196040
	curlSig  = "cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ=="
)

// References in an order other than Nix's, which must not matter.
var curlRefs = []string{
	"/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n",
	"/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0",
	"/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12",
	"/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115",
}

func TestFingerprintMatchesCacheNixosOrg(t *testing.T) {
	hash, err := nixbase32.DecodeString(curlHash)
	if err != nil {
		t.Fatal(err)
	}
	fp, err := Fingerprint(curlPath, hash, curlSize, curlRefs)
	if err != nil {
		t.Fatal(err)
	}
	want := "1;" + curlPath + ";sha256:" + curlHash + ";196040;" +
		"/nix/store/0jqd0rlxzra1rs38rdxl43yh6rxchgc6-curl-7.82.0," +
		"/nix/store/6w8g7njm4mck5dmjxws0z1xnrxvl81xa-glibc-2.34-115," +
		"/nix/store/j5jxw3iy7bbz4a57fh9g2xm2gxmyal8h-zlib-1.2.12," +
		"/nix/store/yxvjs9drzsphm9pcf42a4byzj1kb9m7k-openssl-1.1.1n"
	if fp != want {
		t.Fatalf("fingerprint\n got %s\nwant %s", fp, want)
	}
	key, err := ParsePublicKey(nixosKey)
	if err != nil {
		t.Fatal(err)
	}
	sig, err := ParseSignature(curlSig)
	if err != nil {
		t.Fatal(err)
	}
	if !Verify(fp, sig, []PublicKey{key}) {
		t.Fatal("cache.nixos.org's signature does not verify against our fingerprint")
	}
	if Verify(strings.Replace(fp, "196040", "196041", 1), sig, []PublicKey{key}) {
		t.Fatal("a signature verified against a wrong fingerprint")
	}
}

func TestFingerprintRefusesWhatNixRefuses(t *testing.T) {
	hash := make([]byte, 32)
	if _, err := Fingerprint(curlPath, hash, 0, nil); err == nil {
		t.Error("a path of unknown NAR size got a fingerprint")
	}
	if _, err := Fingerprint(curlPath, hash[:20], 1, nil); err == nil {
		t.Error("a non-SHA-256 hash got a fingerprint")
	}
	fp, _ := Fingerprint(curlPath, hash, 1, nil)
	if !strings.HasSuffix(fp, ";1;") {
		t.Errorf("no references should end the fingerprint with ';': %s", fp)
	}
}

func TestGeneratedKeysRoundTrip(t *testing.T) {
	k, err := Generate("round-trip-1")
	if err != nil {
		t.Fatal(err)
	}
	k2, err := ParseSecretKey(k.Text() + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if k2.Name() != "round-trip-1" || k2.Public().String() != k.Public().String() {
		t.Fatal("secret key did not survive its text form")
	}
	sig := k.Sign("fp")
	if !Verify("fp", sig, []PublicKey{k.Public()}) {
		t.Fatal("own signature does not verify")
	}
	// Keys pair with signatures by name: the same key under another name
	// does not count, as in Nix.
	renamed := k.Public()
	renamed.Name = "other-1"
	if Verify("fp", sig, []PublicKey{renamed}) {
		t.Fatal("a signature verified against a key of another name")
	}
}

func TestValidateName(t *testing.T) {
	for _, ok := range []string{"cache.example.org-1", "a", "my_cache-2024"} {
		if err := ValidateName(ok); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
	for _, bad := range []string{"", "a:b", "a b", "a#b", "a\tb", "a\nb"} {
		if err := ValidateName(bad); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}
