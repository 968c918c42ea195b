package atomicfile

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"
)

// TooLargeError says a file is larger than the reader allows.
type TooLargeError struct {
	Path string
	Max  int64
	What string // "a Nix key file"
}

func (e *TooLargeError) Error() string {
	return fmt.Sprintf("%q is larger than %d bytes, too large to be %s", e.Path, e.Max, e.What)
}

// ReadCapped reads a small regular file whole (a key, nix.conf, a
// configuration), refusing with *TooLargeError one over max bytes (what
// names the kind of file for the message): a file that size is a mistake,
// and reading it would only waste memory.
func ReadCapped(path string, max int64, what string) ([]byte, fs.FileInfo, error) {
	// Opening a FIFO for reading blocks until a writer comes, unless
	// non-blocking; the flag changes nothing for a regular file.
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, nil, fmt.Errorf("%q is not a regular file", path)
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, nil, err
	}
	if int64(len(data)) > max {
		return nil, nil, &TooLargeError{path, max, what}
	}
	return data, st, nil
}
