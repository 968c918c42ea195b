package substituter

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixbase32"
	"github.com/ulikunitz/xz"
)

// uploadRecorder is the cache's side of uploads, as nixcache serve and the
// publisher answer them: it reads each upload whole (a body cut short is
// no upload), records it, and serves the path from then on.
type uploadRecorder struct {
	files *cacheFiles

	mu      sync.Mutex
	uploads []recordedUpload
	// refuse, when set, is the status and line every upload gets.
	refuse  int
	message string
	// hold, when set, keeps each upload waiting until it is closed;
	// started hears of each.
	hold, started chan struct{}
}

type recordedUpload struct {
	hash, encoding, narinfo string
	nar                     []byte
}

func newUploadRecorder(f *fixture) *uploadRecorder {
	u := &uploadRecorder{files: f.cache.files}
	f.cache.files.mu.Lock()
	f.cache.files.writes = u
	f.cache.files.mu.Unlock()
	return u
}

func (u *uploadRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodPost && r.URL.Path == missingPath {
		data, _ := io.ReadAll(r.Body)
		u.files.mu.Lock()
		defer u.files.mu.Unlock()
		for line := range strings.Lines(string(data)) {
			p := strings.TrimSpace(line)
			base := p[strings.LastIndexByte(p, '/')+1:]
			if _, ok := u.files.small["/"+storeHashOf(base)+".narinfo"]; !ok {
				fmt.Fprintln(w, p)
			}
		}
		return
	}
	hash, ok := strings.CutPrefix(r.URL.Path, uploadPrefix)
	if r.Method != http.MethodPut || !ok {
		http.Error(w, "not an upload", http.StatusNotFound)
		return
	}
	u.mu.Lock()
	hold, started := u.hold, u.started
	u.mu.Unlock()
	if started != nil {
		started <- struct{}{}
	}
	if hold != nil {
		<-hold
	}
	body := io.Reader(r.Body)
	enc := r.Header.Get("Content-Encoding")
	if enc == "zstd" {
		d, err := zstd.NewReader(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		defer d.Close()
		body = d
	}
	br := bufio.NewReader(body)
	var narinfo strings.Builder
	var size int64 = -1
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			http.Error(w, "the narinfo is cut short", http.StatusBadRequest)
			return
		}
		if line == "\n" {
			break
		}
		narinfo.WriteString(line)
		if v, ok := strings.CutPrefix(line, "NarSize: "); ok {
			size, _ = strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		}
	}
	nar, err := io.ReadAll(br)
	if err != nil || int64(len(nar)) != size {
		http.Error(w, fmt.Sprintf("the NAR is cut short (%d of %d bytes): %v", len(nar), size, err), http.StatusUnprocessableEntity)
		return
	}
	u.mu.Lock()
	refuse, message := u.refuse, u.message
	if refuse == 0 {
		u.uploads = append(u.uploads, recordedUpload{hash: hash, encoding: enc, narinfo: narinfo.String(), nar: nar})
	}
	u.mu.Unlock()
	if refuse != 0 {
		http.Error(w, message, refuse)
		return
	}
	// Served from now on, as nixcache serve writes narinfos.
	i, _ := strconv.Atoi(strings.TrimLeft(hash, "0"))
	u.files.mu.Lock()
	u.files.small["/"+hash+".narinfo"] = fmt.Sprintf("StorePath: /nix/store/%s-p%d\nURL: nar/%s\nCompression: none\nFileSize: %d\nNarSize: %d\nReferences: \n",
		hash, i, narName(i), size, size)
	u.files.mu.Unlock()
	w.WriteHeader(http.StatusCreated)
	io.WriteString(w, "imported and published\n")
}

func (u *uploadRecorder) recorded() []recordedUpload {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]recordedUpload(nil), u.uploads...)
}

// do sends one request to the substituter, from a socket made by uid
// (when the test runs as root; otherwise as the test's user).
func (f *fixture) do(t *testing.T, uid int, method, path string, header http.Header, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, f.url+path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true, DialContext: dialAs(uid)}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, strings.TrimSpace(string(b))
}

// dialAs makes the client's socket as uid: on a thread of its own whose
// effective uid is set with the raw system call (Go's Setresuid changes
// every thread), and set back before the thread is given back.
func dialAs(uid int) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if os.Geteuid() != 0 || uid == 0 {
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}
		runtime.LockOSThread()
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), uintptr(uid), ^uintptr(0)); e != 0 {
			runtime.UnlockOSThread()
			return nil, fmt.Errorf("setresuid: %v", e)
		}
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if _, _, e := syscall.RawSyscall(syscall.SYS_SETRESUID, ^uintptr(0), 0, ^uintptr(0)); e != 0 {
			// The thread stays locked, and ends with its goroutine.
			return nil, fmt.Errorf("setresuid back: %v", e)
		}
		runtime.UnlockOSThread()
		return c, err
	}
}

// uploading lets the test's user upload: root may anyway; another user
// must be an --upload-user.
func uploading(opt Options) Options {
	if uid := os.Geteuid(); uid != 0 {
		opt.UploadUIDs = append(opt.UploadUIDs, uint32(uid))
	}
	return opt
}

// nobody is an unprivileged uid: nobody's when the test runs as root, else
// the test's own.
func nobody() int {
	if os.Geteuid() == 0 {
		return 65534
	}
	return os.Geteuid()
}

func testNAR(n int, seed byte) []byte {
	nar := make([]byte, n)
	for i := range nar {
		nar[i] = byte(i/7) ^ seed
	}
	return nar
}

func nix32sha(b []byte) string {
	sum := sha256.Sum256(b)
	return nixbase32.EncodeToString(sum[:])
}

// nixCopy uploads nar as store path i the way Nix's HTTP binary-cache store
// does, as root: the NAR file, then the narinfo that names it. It returns
// the narinfo PUT's answer.
func (f *fixture) nixCopy(t *testing.T, i int, nar []byte, compression string) (int, string) {
	t.Helper()
	file, ext := compressNAR(t, nar, compression)
	name := nix32sha(file) + ".nar" + ext
	if code, _ := f.do(t, 0, "HEAD", "/nar/"+name, nil, nil); code != 404 {
		t.Fatalf("HEAD nar/%s before its PUT: %d, want 404", name, code)
	}
	if code, body := f.do(t, 0, "PUT", "/nar/"+name, http.Header{"Content-Type": {"application/x-nix-nar"}}, file); code != 200 {
		t.Fatalf("PUT nar/%s: %d %q", name, code, body)
	}
	if code, _ := f.do(t, 0, "HEAD", "/nar/"+name, nil, nil); code != 200 {
		t.Fatalf("HEAD nar/%s after its PUT: %d, want 200", name, code)
	}
	return f.do(t, 0, "PUT", "/"+storeHash(i)+".narinfo", http.Header{"Content-Type": {"text/x-nix-narinfo"}},
		[]byte(nixNarinfo(i, nar, file, name, compression)))
}

func nixNarinfo(i int, nar, file []byte, name, compression string) string {
	return fmt.Sprintf("StorePath: /nix/store/%s-p%d\nURL: nar/%s\nCompression: %s\nFileHash: sha256:%s\nFileSize: %d\nNarHash: sha256:%s\nNarSize: %d\nReferences: \n",
		storeHash(i), i, name, compression, nix32sha(file), len(file), nix32sha(nar), len(nar))
}

func compressNAR(t *testing.T, nar []byte, compression string) ([]byte, string) {
	t.Helper()
	var b bytes.Buffer
	switch compression {
	case "none":
		return nar, ""
	case "xz":
		w, err := xz.NewWriter(&b)
		if err != nil {
			t.Fatal(err)
		}
		w.Write(nar)
		w.Close()
		return b.Bytes(), ".xz"
	case "zstd":
		w, _ := zstd.NewWriter(&b)
		w.Write(nar)
		w.Close()
		return b.Bytes(), ".zst"
	}
	t.Fatalf("no %s here", compression)
	return nil, ""
}

// Anyone on this machine can reach the port: reads stay open to all, but
// only root and the --upload-user users may upload, as the kernel says
// whose socket the request comes from.
func TestUploadsOnlyFromRootAndUploadUsers(t *testing.T) {
	for _, allowed := range []bool{false, true} {
		t.Run(fmt.Sprintf("upload-user=%v", allowed), func(t *testing.T) {
			var opt Options
			if allowed {
				opt.UploadUIDs = []uint32{uint32(nobody())}
			}
			f := newFixture(t, opt)
			rec := newUploadRecorder(f)
			f.cache.addPath(1, 10)
			if code, _ := f.do(t, nobody(), "GET", "/"+storeHash(1)+".narinfo", nil, nil); code != 200 {
				t.Fatalf("a read from uid %d: %d, want 200", nobody(), code)
			}
			nar := testNAR(1000, 1)
			body := []byte(nixNarinfo(2, nar, nar, nix32sha(nar)+".nar", "none") + "\n" + string(nar))
			for _, req := range []struct{ method, path string }{
				{"PUT", uploadPrefix + storeHash(2)},
				{"POST", missingPath},
				{"PUT", "/nar/" + nix32sha(nar) + ".nar"},
				{"PUT", "/" + storeHash(2) + ".narinfo"},
				{"PUT", "/" + storeHash(2) + ".ls"},
			} {
				code, msg := f.do(t, nobody(), req.method, req.path, nil, body)
				if allowed {
					if code == http.StatusForbidden {
						t.Errorf("%s %s from --upload-user uid %d: %d %q", req.method, req.path, nobody(), code, msg)
					}
					continue
				}
				want := fmt.Sprintf("uploads through this substituter are for root and --upload-user users; uid %d is neither", nobody())
				if code != http.StatusForbidden || !strings.Contains(msg, want) {
					t.Errorf("%s %s from uid %d: %d %q, want 403 %q", req.method, req.path, nobody(), code, msg, want)
				}
			}
			if !allowed {
				if n := f.cache.files.count("PUT") + f.cache.files.count("POST"); n != 0 {
					t.Errorf("refused uploads reached the cache: %q", f.cache.files.requests())
				}
				if os.Geteuid() != 0 {
					return
				}
				// Root may.
				if code, msg := f.do(t, 0, "PUT", uploadPrefix+storeHash(2), nil, body); code != http.StatusCreated {
					t.Fatalf("an upload from root: %d %q", code, msg)
				}
			}
			if got := rec.recorded(); len(got) != 1 || !bytes.Equal(got[0].nar, nar) {
				t.Errorf("the cache received %d uploads, want the one", len(got))
			}
		})
	}
}

// nix copy --to http://...: the NAR file, compressed as the store's
// compression= says, then the narinfo; the substituter sends them to the
// cache as one upload of the NAR itself.
func TestNixCopyUpload(t *testing.T) {
	f := newFixture(t, uploading(Options{}))
	rec := newUploadRecorder(f)
	for i, compression := range []string{"none", "xz", "zstd"} {
		hash := storeHash(i + 1)
		// Nix asked before: the 404 is remembered...
		if code, _ := f.get(t, "GET", "/"+hash+".narinfo"); code != 404 {
			t.Fatalf("narinfo before the upload: %d", code)
		}
		nar := testNAR(300<<10, byte(i))
		if code, msg := f.nixCopy(t, i+1, nar, compression); code != 200 {
			t.Fatalf("%s: PUT narinfo: %d %q", compression, code, msg)
		}
		got := rec.recorded()
		if len(got) != i+1 {
			t.Fatalf("%s: the cache received %d uploads, want %d", compression, len(got), i+1)
		}
		up := got[i]
		if up.hash != hash || !bytes.Equal(up.nar, nar) || !strings.Contains(up.narinfo, "StorePath: /nix/store/"+hash) {
			t.Errorf("%s: the cache received %s with %d bytes of NAR and narinfo %q", compression, up.hash, len(up.nar), up.narinfo)
		}
		if up.encoding != "zstd" {
			t.Errorf("%s: a NAR that compresses went as %q, want zstd", compression, up.encoding)
		}
		// ...and forgotten once the path is uploaded.
		if code, _ := f.get(t, "HEAD", "/"+hash+".narinfo"); code != 200 {
			t.Errorf("%s: narinfo after the upload: %d, want 200", compression, code)
		}
	}
	entries, err := os.ReadDir(f.srv.uploadSpool.dir)
	if err != nil || len(entries) != 0 || f.srv.uploadSpool.used != 0 {
		t.Errorf("the upload spool holds %v (%d bytes), %v", entries, f.srv.uploadSpool.used, err)
	}
}

// Uploads one after the other, as nix copy sends them, go on one channel:
// each new channel costs two round trips and a serve process on the cache.
func TestNixCopyUploadsReuseTheirChannel(t *testing.T) {
	f := newFixture(t, uploading(Options{}))
	newUploadRecorder(f)
	channels := func() int {
		f.cache.mu.Lock()
		defer f.cache.mu.Unlock()
		return f.cache.channels
	}
	var after int
	for i := 1; i <= 4; i++ {
		if code, msg := f.nixCopy(t, i, testNAR(64<<10, byte(i)), "none"); code != 200 {
			t.Fatalf("upload %d: %d %q", i, code, msg)
		}
		if i == 1 {
			after = channels()
		}
	}
	if n := channels(); n != after {
		t.Errorf("three more uploads opened %d more channels, want none", n-after)
	}
}

// What Nix cannot mean, or what the cache cannot take, is answered with a
// status Nix does not retry and a line it prints.
func TestNixCopyRefusals(t *testing.T) {
	f := newFixture(t, uploading(Options{}))
	rec := newUploadRecorder(f)
	nar := testNAR(100<<10, 9)
	name := nix32sha(nar) + ".nar"
	put := func(path string, body []byte) (int, string) { return f.do(t, 0, "PUT", path, nil, body) }

	if code, msg := put("/nar/"+nix32sha(nar)+".nar.lz4", nar); code != http.StatusUnsupportedMediaType || !strings.Contains(msg, "use ?compression=zstd or none") {
		t.Errorf("an lz4 NAR: %d %q", code, msg)
	}
	if code, msg := put("/nar/"+nix32sha([]byte("other"))+".nar", nar); code != http.StatusBadRequest {
		t.Errorf("a NAR file whose name is not its hash: %d %q", code, msg)
	}
	if code, msg := put("/"+storeHash(1)+".narinfo", []byte(nixNarinfo(1, nar, nar, name, "none"))); code != http.StatusBadRequest || !strings.Contains(msg, "send the NAR file first") {
		t.Errorf("a narinfo without its NAR: %d %q", code, msg)
	}
	if code, msg := put("/nar/"+name, nar); code != 200 {
		t.Fatalf("PUT nar: %d %q", code, msg)
	}
	if code, msg := put("/"+storeHash(2)+".narinfo", []byte(nixNarinfo(1, nar, nar, name, "none"))); code != http.StatusBadRequest || !strings.Contains(msg, "StorePath") {
		t.Errorf("a narinfo under another hash: %d %q", code, msg)
	}
	// The NAR is not the one the narinfo's NarHash says: the relayed
	// upload is cut off, and the cache takes nothing.
	other := testNAR(100<<10, 10)
	info := strings.Replace(nixNarinfo(1, other, nar, name, "none"), "NarSize: "+strconv.Itoa(len(other)), "NarSize: "+strconv.Itoa(len(nar)), 1)
	if code, msg := put("/"+storeHash(1)+".narinfo", []byte(info)); code != http.StatusUnprocessableEntity || !strings.Contains(msg, "NarHash") {
		t.Errorf("a NAR unlike its NarHash: %d %q", code, msg)
	}
	if got := rec.recorded(); len(got) != 0 {
		t.Errorf("the cache took %d uploads", len(got))
	}
	// The cache's refusal reaches Nix, status and line.
	rec.mu.Lock()
	rec.refuse, rec.message = http.StatusConflict, "the reference /nix/store/x-y is not valid on the cache"
	rec.mu.Unlock()
	if code, msg := put("/"+storeHash(1)+".narinfo", []byte(nixNarinfo(1, nar, nar, name, "none"))); code != http.StatusConflict || msg != rec.message {
		t.Errorf("the cache's 409: Nix got %d %q", code, msg)
	}
	// The NAR file stays for Nix's next try.
	if code, _ := f.do(t, 0, "HEAD", "/nar/"+name, nil, nil); code != 200 {
		t.Errorf("after a refused narinfo, HEAD nar: %d, want 200", code)
	}
	// What Nix writes beside paths is taken and dropped; realisations are
	// refused.
	before := len(f.cache.files.requests())
	for path, want := range map[string]int{
		"/" + storeHash(1) + ".ls":    200,
		"/log/" + storeHash(1) + "-x": 200,
		"/nix-cache-info":             200,
		"/realisations/x.doi":         http.StatusNotImplemented,
	} {
		if code, msg := put(path, []byte("{}")); code != want {
			t.Errorf("PUT %s: %d %q, want %d", path, code, msg, want)
		}
	}
	if got := f.cache.files.requests(); len(got) != before {
		t.Errorf("the cache was asked %q", got[before:])
	}
	// GET of an uploaded NAR file: it is not for reading.
	if code, _ := f.do(t, nobody(), "GET", "/nar/"+name, nil, nil); code != 404 {
		t.Errorf("GET of an uploaded NAR file: %d, want 404", code)
	}
}

// nixcache push's requests are relayed as they are, answers too.
func TestPushRelay(t *testing.T) {
	f := newFixture(t, uploading(Options{}))
	rec := newUploadRecorder(f)
	f.cache.addPath(1, 10)
	q := "/nix/store/" + storeHash(1) + "-p1\n/nix/store/" + storeHash(2) + "-p2\n"
	if code, body := f.do(t, 0, "POST", missingPath, nil, []byte(q)); code != 200 || body != "/nix/store/"+storeHash(2)+"-p2" {
		t.Errorf("missing: %d %q", code, body)
	}
	if code, _ := f.get(t, "GET", "/"+storeHash(2)+".narinfo"); code != 404 {
		t.Fatal(code)
	}
	// Random bytes do not compress: they go as they are.
	nar := make([]byte, 1<<20)
	for i := range nar {
		nar[i] = byte(uint64(i) * 0x9E3779B97F4A7C15 >> 56)
	}
	body := nixNarinfo(2, nar, nar, nix32sha(nar)+".nar", "none") + "\n" + string(nar)
	code, msg := f.do(t, 0, "PUT", uploadPrefix+storeHash(2), http.Header{"Content-Type": {"application/octet-stream"}}, []byte(body))
	if code != http.StatusCreated || msg != "imported and published" {
		t.Fatalf("upload: %d %q", code, msg)
	}
	if got := rec.recorded(); len(got) != 1 || !bytes.Equal(got[0].nar, nar) {
		t.Fatalf("the cache received %d uploads", len(got))
	}
	if code, _ := f.get(t, "GET", "/"+storeHash(2)+".narinfo"); code != 200 {
		t.Errorf("the uploaded path's narinfo: %d (a remembered 404?)", code)
	}
	// Refused before the body is read: a small one, which the HTTP server
	// drains, so that the client hears the answer rather than a reset.
	small := []byte(nixNarinfo(2, nar[:10], nar[:10], nix32sha(nar[:10])+".nar", "none") + "\n" + string(nar[:10]))
	if code, msg := f.do(t, 0, "PUT", uploadPrefix+"x", nil, small); code != 400 {
		t.Errorf("an upload to a bad name: %d %q", code, msg)
	}
	if code, msg := f.do(t, 0, "PUT", uploadPrefix+storeHash(3), http.Header{"Content-Encoding": {"br"}}, small); code != http.StatusUnsupportedMediaType {
		t.Errorf("a brotli upload: %d %q", code, msg)
	}
}

// Uploads take NAR channels, but never all of them: Nix keeps
// substituting during a push.
func TestUploadsLeaveANARChannel(t *testing.T) {
	f := newFixture(t, uploading(Options{Channels: 4, SpoolBytes: -1})) // 1 narinfo channel, 3 for NARs
	rec := newUploadRecorder(f)
	hold, started := make(chan struct{}), make(chan struct{}, 16)
	rec.mu.Lock()
	rec.hold, rec.started = hold, started
	rec.mu.Unlock()
	f.cache.addPath(1, 1000)
	nar := testNAR(1000, 3)
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			body := nixNarinfo(10+i, nar, nar, nix32sha(nar)+".nar", "none") + "\n" + string(nar)
			f.do(t, 0, "PUT", uploadPrefix+storeHash(10+i), nil, []byte(body))
		}()
	}
	for range 2 {
		select {
		case <-started:
		case <-time.After(5 * time.Second):
			t.Fatal("no upload reached the cache")
		}
	}
	select {
	case <-started:
		t.Error("a third upload holds the last NAR channel")
	case <-time.After(300 * time.Millisecond):
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, "GET", f.url+"/nar/"+narName(1), nil)
	if code, _ := f.get(t, "GET", "/"+storeHash(1)+".narinfo"); code != 200 {
		t.Fatal(code)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("a NAR during uploads: %v", err)
	}
	n, _ := io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || n != 1000 {
		t.Errorf("a NAR during uploads: %d, %d bytes", resp.StatusCode, n)
	}
	close(hold)
	wg.Wait()
	if got := rec.recorded(); len(got) != 4 {
		t.Errorf("%d of 4 uploads arrived", len(got))
	}
}

func TestProcAddr(t *testing.T) {
	for in, want := range map[string]string{
		"0100007F:1F90":                         "127.0.0.1:8080",
		"00000000000000000000000001000000:0016": "[::1]:22",
		"0000000000000000FFFF00000100007F:0050": "127.0.0.1:80",
	} {
		got, err := procAddr(in)
		if err != nil || got.String() != want {
			t.Errorf("procAddr(%q) = %v, %v; want %s", in, got, err, want)
		}
	}
}

// A client that sends its upload and closes its socket at once leaves an
// orphan or a time-wait entry, which the kernel lists with uid 0 and no
// inode: it is nobody's, not root's.
func TestSocketsNoProcessHoldsAreNobodys(t *testing.T) {
	table := t.TempDir() + "/tcp"
	const header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
	rows := header +
		"   0: 0100007F:C350 0100007F:1F90 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000\n" +
		"   1: 0100007F:C351 0100007F:1F90 01 00000000:00000000 00:00000000 00000000  1000        0 4242 1 0000000000000000\n"
	if err := os.WriteFile(table, []byte(rows), 0o600); err != nil {
		t.Fatal(err)
	}
	ours, _ := procAddr("0100007F:1F90")
	for port, want := range map[string]bool{"C350": false, "C351": true} {
		theirs, _ := procAddr("0100007F:" + port)
		uid, found, err := findSocket(table, theirs, ours)
		if err != nil || found != want || (found && uid != 1000) {
			t.Errorf("port %s: uid %d, found %v, %v; want found %v", port, uid, found, err, want)
		}
	}
}
