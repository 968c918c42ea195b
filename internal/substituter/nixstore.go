package substituter

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"crypto/sha256"
	"errors"
	"hash"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/klauspost/compress/zstd"
	"github.com/nix-community/go-nix/pkg/nixhash"
	"github.com/ulikunitz/xz"

	"github.com/nixcache/nixcache/internal/binarycache"
)

// What `nix copy --to http://127.0.0.1:PORT` sends, for each path the cache
// lacks (Nix's BinaryCacheStore::addToStoreCommon, 2.8 to today):
//
//  1. HEAD /HASH.narinfo (answered from the cache, as for substitution);
//  2. HEAD /nar/FILEHASH.nar.xz, the NAR compressed with the store's
//     compression= (xz unless told), FILEHASH the file's SHA-256: 404
//     unless that file was PUT here and waits for its narinfo;
//  3. PUT of that file, which waits here, on disk (uploadSpool);
//  4. PUT /HASH.narinfo, whose URL names the file: the file is
//     decompressed and sent with the narinfo as one upload.
//
// Nix uploads a path only after its references, so the cache always has
// them by the time it imports the path.

// serveNixPut answers a PUT of Nix's HTTP binary-cache store.
func (s *Server) serveNixPut(w http.ResponseWriter, r *http.Request) {
	p := strings.TrimPrefix(r.URL.Path, "/")
	if file, ok := strings.CutPrefix(p, "nar/"); ok {
		s.putNARFile(w, r, file)
		return
	}
	if h, ok := strings.CutSuffix(p, ".narinfo"); ok && isNix32(h, storeHashLen) {
		s.putNarinfo(w, r, h)
		return
	}
	switch {
	case p == "nix-cache-info",
		strings.HasSuffix(p, ".ls") && isNix32(strings.TrimSuffix(p, ".ls"), storeHashLen),
		strings.HasPrefix(p, "log/"), strings.HasPrefix(p, "debuginfo/"):
		// Nix writes these beside a path (write-nar-listing, build logs,
		// write-debug-info); the cache serves none of them. Nix needs
		// only to hear that they were taken.
		w.WriteHeader(http.StatusOK)
	case strings.HasPrefix(p, "realisations/"):
		http.Error(w, "nixcache substituter: the cache does not take realisations of content-addressed derivations; push their outputs as store paths", http.StatusNotImplemented)
	default:
		http.Error(w, "nixcache substituter: takes uploads of nar/FILE, HASH.narinfo and "+uploadPrefix+"HASH only", http.StatusNotFound)
	}
}

// putNARFile takes a NAR file, to wait for its narinfo.
func (s *Server) putNARFile(w http.ResponseWriter, r *http.Request, file string) {
	fileHash, ext, ok := uploadNARFile(file)
	if !ok {
		http.Error(w, "nixcache substituter: a NAR file is nar/FILEHASH.nar[.xz|.zst|.bz2]", http.StatusBadRequest)
		return
	}
	if _, ok := compressionOf(ext); !ok {
		http.Error(w, errCompression, http.StatusUnsupportedMediaType)
		return
	}
	if err := s.uploadSpool.put(file, fileHash, r.Body, r.ContentLength); err != nil {
		answerUploadError(w, err)
		return
	}
	w.WriteHeader(http.StatusOK)
}

// headUploadedNAR answers Nix's question before it PUTs a NAR file: is it
// here already? ok is false when name is not a NAR file's.
func (s *Server) headUploadedNAR(w http.ResponseWriter, r *http.Request, file string) bool {
	if _, _, ok := uploadNARFile(file); !ok {
		return false
	}
	size, ok := s.uploadSpool.has(file)
	if r.Method != http.MethodHead || !ok {
		// The files are uploads waiting for their narinfo, not for
		// anyone to read.
		http.NotFound(w, r)
		return true
	}
	w.Header().Set("Content-Type", "application/x-nix-nar")
	w.Header().Set("Content-Length", strconv.FormatInt(size, 10))
	w.WriteHeader(http.StatusOK)
	return true
}

// putNarinfo turns a narinfo and the NAR file it names into one upload.
func (s *Server) putNarinfo(w http.ResponseWriter, r *http.Request, hash string) {
	text, err := readNarinfo(r)
	if err != nil {
		answerUploadError(w, err)
		return
	}
	info, err := parseUploadNarinfo(text, hash)
	if err != nil {
		answerUploadError(w, err)
		return
	}
	f, size, err := s.uploadSpool.open(info.file)
	if err != nil {
		answerUploadError(w, uploadErrorf(http.StatusBadRequest, "the narinfo's URL nar/%s names no NAR file uploaded here in the last hour: send the NAR file first (nix copy does)", info.file))
		return
	}
	defer f.Close()
	if info.fileSize >= 0 && info.fileSize != size {
		answerUploadError(w, uploadErrorf(http.StatusBadRequest, "the narinfo's FileSize is %d, nar/%s has %d bytes", info.fileSize, info.file, size))
		return
	}
	nar, err := decompress(info.compression, f)
	if err != nil {
		answerUploadError(w, err)
		return
	}
	defer nar.Close()
	check := &narCheck{r: io.LimitReader(nar, info.narSize+1), h: sha256.New(), size: info.narSize, want: info.narHash, file: info.file}
	body := io.MultiReader(strings.NewReader(strings.TrimRight(text, "\n")+"\n\n"), check)
	compressed, encoding, err := binarycache.CompressBody(body)
	if err != nil {
		answerUploadError(w, nonNil(check.err, err))
		return
	}
	defer compressed.Close()
	resp, err := s.relay(r.Context(), http.MethodPut, uploadPrefix+hash, compressed, -1, encoding)
	if check.err != nil {
		// The NAR is not the narinfo's: the request was cut off before
		// its end, so the cache imported nothing.
		if err == nil {
			resp.Body.Close()
		}
		answerUploadError(w, check.err)
		return
	}
	if err != nil {
		relayFailed(w, err)
		return
	}
	defer func() {
		// Read to its end, the answer leaves its channel for the next
		// upload; closed unread, the channel would be closed too, and each
		// upload would pay for a new one (two round trips and a serve).
		io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
		resp.Body.Close()
	}()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusCreated {
		http.Error(w, answerLine(resp), resp.StatusCode)
		return
	}
	s.uploadSpool.done(info.file)
	s.narinfos.forget(hash)
	w.WriteHeader(http.StatusOK)
}

func answerUploadError(w http.ResponseWriter, err error) {
	var ue *uploadError
	if errors.As(err, &ue) {
		http.Error(w, ue.msg, ue.status)
		return
	}
	http.Error(w, "nixcache substituter: "+err.Error(), http.StatusInternalServerError)
}

func nonNil(errs ...error) error {
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// maxUploadNarinfo bounds an uploaded narinfo, as the cache does.
const maxUploadNarinfo = binarycache.MaxUploadNarinfo

// readNarinfo reads a narinfo PUT, which recent Nix may compress
// (narinfo-compression).
func readNarinfo(r *http.Request) (string, error) {
	var body io.Reader = r.Body
	switch e := r.Header.Get("Content-Encoding"); e {
	case "", "identity", "none":
	case "gzip":
		gz, err := gzip.NewReader(r.Body)
		if err != nil {
			return "", uploadErrorf(http.StatusBadRequest, "reading the narinfo: %v", err)
		}
		body = gz
	default:
		dec, err := decompress(e, io.NopCloser(r.Body))
		if err != nil {
			return "", uploadErrorf(http.StatusUnsupportedMediaType, "a narinfo's Content-Encoding is xz, zstd, bzip2, gzip or none, not %q", e)
		}
		defer dec.Close()
		body = dec
	}
	data, err := io.ReadAll(io.LimitReader(body, maxUploadNarinfo+1))
	if err != nil {
		return "", uploadErrorf(http.StatusBadRequest, "reading the narinfo: %v", err)
	}
	if len(data) > maxUploadNarinfo {
		return "", uploadErrorf(http.StatusRequestEntityTooLarge, "a narinfo is at most %d bytes", maxUploadNarinfo)
	}
	return string(data), nil
}

// uploadNarinfo is what an upload needs from Nix's narinfo; the cache
// checks the rest.
type uploadNarinfo struct {
	file        string // the NAR file's name under nar/
	compression string
	fileSize    int64 // -1 when absent
	narHash     []byte
	narSize     int64
}

func parseUploadNarinfo(text, hash string) (*uploadNarinfo, error) {
	info := &uploadNarinfo{fileSize: -1}
	var storePath, url, fileHash, narHash, narSize string
	for line := range strings.Lines(text) {
		key, value, ok := strings.Cut(strings.TrimSuffix(line, "\n"), ": ")
		if !ok {
			continue
		}
		switch key {
		case "StorePath":
			storePath = value
		case "URL":
			url = value
		case "Compression":
			info.compression = value
		case "FileHash":
			fileHash = value
		case "FileSize":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n < 0 {
				return nil, uploadErrorf(http.StatusBadRequest, "the narinfo's FileSize %q is not a size", value)
			}
			info.fileSize = n
		case "NarHash":
			narHash = value
		case "NarSize":
			narSize = value
		}
	}
	if storeHashOf(storePath[strings.LastIndexByte(storePath, '/')+1:]) != hash {
		return nil, uploadErrorf(http.StatusBadRequest, "the narinfo's StorePath %q is not the path %s.narinfo names", storePath, hash)
	}
	file, ok := strings.CutPrefix(url, "nar/")
	fh, ext, valid := uploadNARFile(file)
	if !ok || !valid {
		return nil, uploadErrorf(http.StatusBadRequest, "the narinfo's URL %q is not nar/FILEHASH.nar[.EXT]", url)
	}
	info.file = file
	if info.compression == "" {
		info.compression = "bzip2" // Nix's default when the field is absent
	}
	if want, ok := compressionOf(ext); !ok {
		return nil, uploadErrorf(http.StatusUnsupportedMediaType, "%s", strings.TrimPrefix(errCompression, "nixcache substituter: "))
	} else if want != info.compression {
		return nil, uploadErrorf(http.StatusBadRequest, "the narinfo's Compression %q does not go with its URL %q", info.compression, url)
	}
	if fileHash != "" {
		h, err := nixhash.ParseAny(fileHash, &sha256Algo)
		if err != nil || !bytes.Equal(h.Digest(), mustNix32(fh)) {
			return nil, uploadErrorf(http.StatusBadRequest, "the narinfo's FileHash %q is not the hash of nar/%s", fileHash, file)
		}
	}
	h, err := nixhash.ParseAny(narHash, &sha256Algo)
	if err != nil {
		return nil, uploadErrorf(http.StatusBadRequest, "the narinfo's NarHash %q is not a SHA-256 hash", narHash)
	}
	info.narHash = h.Digest()
	if info.narSize, err = strconv.ParseInt(narSize, 10, 64); err != nil || info.narSize <= 0 {
		return nil, uploadErrorf(http.StatusBadRequest, "the narinfo's NarSize %q is not a size", narSize)
	}
	return info, nil
}

var sha256Algo = nixhash.SHA256

func mustNix32(s string) []byte {
	h, err := nixhash.ParseNixBase32("sha256:" + s)
	if err != nil {
		return nil
	}
	return h.Digest()
}

// decompress reads a NAR file compressed as compression says.
func decompress(compression string, f io.ReadCloser) (io.ReadCloser, error) {
	switch compression {
	case "none":
		return f, nil
	case "xz":
		d, err := xz.NewReader(f)
		if err != nil {
			return nil, uploadErrorf(http.StatusBadRequest, "the NAR file is not xz: %v", err)
		}
		return readCloser{d, f}, nil
	case "zstd":
		d, err := zstd.NewReader(f, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
		if err != nil {
			return nil, uploadErrorf(http.StatusBadRequest, "the NAR file is not zstd: %v", err)
		}
		return readCloser{d, closers{d.IOReadCloser(), f}}, nil
	case "bzip2":
		return readCloser{bzip2.NewReader(f), f}, nil
	}
	return nil, uploadErrorf(http.StatusUnsupportedMediaType, "%s", strings.TrimPrefix(errCompression, "nixcache substituter: "))
}

type readCloser struct {
	io.Reader
	io.Closer
}

type closers []io.Closer

func (cs closers) Close() error {
	var errs []error
	for _, c := range cs {
		errs = append(errs, c.Close())
	}
	return errors.Join(errs...)
}

// narCheck passes a NAR on while counting and hashing it, and fails the
// read that would pass more than its narinfo's NarSize, or end it short of
// it or with another NarHash: the relayed request then ends without its
// last chunk, and the cache imports nothing.
type narCheck struct {
	r    io.Reader
	h    hash.Hash
	n    int64
	size int64
	want []byte
	file string
	err  error
}

func (c *narCheck) Read(p []byte) (int, error) {
	if c.err != nil {
		return 0, c.err
	}
	n, err := c.r.Read(p)
	c.h.Write(p[:n])
	c.n += int64(n)
	switch {
	case c.n > c.size:
		c.err = uploadErrorf(http.StatusUnprocessableEntity, "nar/%s holds more than the narinfo's NarSize, %d bytes", c.file, c.size)
	case err == io.EOF && c.n < c.size:
		c.err = uploadErrorf(http.StatusUnprocessableEntity, "nar/%s holds %d bytes, the narinfo's NarSize is %d", c.file, c.n, c.size)
	case err == io.EOF && !bytes.Equal(c.h.Sum(nil), c.want):
		c.err = uploadErrorf(http.StatusUnprocessableEntity, "nar/%s is not the NAR of the narinfo's NarHash", c.file)
	case err != nil && err != io.EOF:
		c.err = uploadErrorf(http.StatusBadRequest, "decompressing nar/%s: %v", c.file, err)
	}
	if c.err != nil {
		return 0, c.err
	}
	return n, err
}
