package nixconf

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"unicode"

	"github.com/rogpeppe/go-internal/diff"

	"github.com/nixcache/nixcache/internal/nixkey"
)

// EditOptions describes the Nix that reads the file and how to mark an edit.
type EditOptions struct {
	// GenericExtra says the Nix that reads the file understands generic
	// `extra-NAME` settings (Nix >= 2.4).
	GenericExtra bool
	// Comment, if not empty, is written as a `# ...` line above any line the
	// edit appends, so that whoever reads the file later knows where it came
	// from (e.g. "added by nixcache client join for ssh-ng://nix-ssh@cache").
	Comment string
	// Defaults are settings written as NAME = VALUE when nothing assigns
	// them yet (join's "fallback = true"); an assignment the admin made,
	// whatever its value, is left as it is.
	Defaults map[string]string
}

// Change is a planned edit of one file: its full old and new contents, so
// that the caller can show it before anything is written and Apply can
// refuse if the file changed in between.
type Change struct {
	Path     string
	Old, New []byte
	Exists   bool        // whether Path exists now
	Mode     fs.FileMode // mode to write (the existing file's, else 0644)
}

// ReadOnlyError says the target cannot be edited: NixOS, nix-darwin and
// home-manager generate nix.conf as a symlink into /nix/store, and a file on
// a read-only file system or not writable by this user cannot be changed
// either. The fix is elsewhere (the system's Nix configuration, or root), so
// nothing is planned.
type ReadOnlyError struct {
	Path   string
	Reason string
}

func (e *ReadOnlyError) Error() string {
	return fmt.Sprintf("%q cannot be edited: %s", e.Path, e.Reason)
}

// OverrideError says a line read after the edit would replace the setting
// again, so the values added would not take effect.
type OverrideError struct {
	Setting string
	File    string // the file holding the overriding line
	Line    int
	Target  string // the file the edit would have gone to
}

func (e *OverrideError) Error() string {
	return fmt.Sprintf("%q line %d sets %s after %q is read, so values added there would not take effect; add them on that line, or change it to extra-%s",
		e.File, e.Line, e.Setting, e.Target, e.Setting)
}

// Add plans the edits that make every value in add[name] part of the
// effective setting name (for example "substituters" or
// "trusted-public-keys"; any list setting works). Values already effective
// are left alone; if nothing is missing it returns no changes, so a second
// run is a no-op, even on a read-only configuration that already has them.
//
// The edit goes to Target: onto the line that last replaces the setting if
// that line is there, else as a new `extra-NAME = ...` line at the end, or,
// for a Nix without generic extra- settings, as `NAME = ` the whole effective
// list plus the new values. The planned contents are then read back as Nix
// would, and the plan is refused if a later line elsewhere undoes it.
func (c *Config) Add(add map[string][]string, opt EditOptions) ([]Change, error) {
	missing := map[string][]string{}
	for name, values := range add {
		setting, _ := Canonical(name)
		effective := c.Effective(setting)
		for _, v := range values {
			if err := checkValue(setting, v); err != nil {
				return nil, err
			}
			if !slices.Contains(effective, v) && !slices.Contains(missing[setting], v) {
				missing[setting] = append(missing[setting], v)
			}
		}
	}
	var defaults []string
	for name := range opt.Defaults {
		if _, set := c.Get(name); !set {
			defaults = append(defaults, name)
		}
	}
	sort.Strings(defaults)
	if len(missing) == 0 && len(defaults) == 0 {
		return nil, nil
	}
	settings := make([]string, 0, len(missing))
	for s := range missing {
		settings = append(settings, s)
	}
	sort.Strings(settings)

	target := c.Target()
	if err := checkWritable(target); err != nil {
		return nil, fmt.Errorf("cannot add %s: %w", strings.Join(append(settings, defaults...), " and "), err)
	}
	if slices.Contains(c.Skipped, target) {
		return nil, fmt.Errorf("cannot read %q, so it cannot be edited", target)
	}
	old, exists := c.contents[target]
	if !exists {
		// Not read: a missing nix.conf, or a nix.custom.conf that !include
		// allows to be missing.
		if _, err := os.Lstat(target); !errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("%q was not read, so it cannot be edited safely", target)
		}
	}
	mode := fs.FileMode(0o644)
	if exists {
		fi, err := os.Stat(target)
		if err != nil {
			return nil, err
		}
		mode = fi.Mode().Perm()
	}

	buf := slices.Clone(old)
	cur := c
	var appended []string
	for _, s := range settings {
		m := missing[s]
		last := cur.lastPlain(s)
		switch {
		case last != nil && last.file == target:
			// Editing the line that decides the value keeps the file as its
			// author laid it out, and nothing after it can undo the edit.
			buf = slices.Insert(buf, last.valueEnd, []byte(" "+strings.Join(m, " "))...)
			var err error
			if cur, err = load(c.Dir, map[string][]byte{target: buf}); err != nil {
				return nil, err
			}
		case opt.GenericExtra:
			appended = append(appended, "extra-"+s+" = "+strings.Join(m, " "))
		default:
			// Without generic extra-, only a full assignment adds, and it must
			// repeat what is effective now, defaults included.
			appended = append(appended, s+" = "+strings.Join(append(cur.Effective(s), m...), " "))
		}
	}
	for _, name := range defaults {
		appended = append(appended, name+" = "+opt.Defaults[name])
	}
	if len(appended) > 0 {
		buf = appendLines(buf, opt.Comment, appended)
	}

	after, err := load(c.Dir, map[string][]byte{target: buf})
	if err != nil {
		return nil, fmt.Errorf("the edited %q would not read back: %w", target, err)
	}
	for _, s := range settings {
		now := after.Effective(s)
		for _, v := range append(c.Effective(s), missing[s]...) {
			if slices.Contains(now, v) {
				continue
			}
			if last := after.lastPlain(s); last != nil && last.file != target {
				return nil, &OverrideError{Setting: s, File: last.file, Line: last.line, Target: target}
			}
			return nil, fmt.Errorf("the edit of %q would not make every value of %s effective", target, s)
		}
	}
	for _, name := range defaults {
		if v, _ := after.Get(name); !slices.Equal(v, []string{opt.Defaults[name]}) {
			if last := after.lastPlain(name); last != nil && last.file != target {
				return nil, &OverrideError{Setting: name, File: last.file, Line: last.line, Target: target}
			}
			return nil, fmt.Errorf("the edit of %q would not set %s", target, name)
		}
	}
	return []Change{{Path: target, Old: old, New: buf, Exists: exists, Mode: mode}}, nil
}

// checkValue refuses a value that would not read back as the one value it
// is: Nix splits at ASCII white space and cuts at '#', and other readers of
// what join writes (the managed ssh configuration's) split at Unicode white
// space. A trusted key must be one Nix can load: Nix fails every
// substitution on a malformed one. The error quotes nothing of the value.
func checkValue(setting, v string) error {
	if v == "" || strings.ContainsFunc(v, func(r rune) bool {
		return r == '#' || unicode.IsSpace(r) || unicode.IsControl(r)
	}) {
		return fmt.Errorf("a value for %s is empty or contains white space, a control character or \"#\", which nix.conf cannot hold", setting)
	}
	if setting == "trusted-public-keys" {
		if _, err := nixkey.ParsePublicKey(v); err != nil {
			return fmt.Errorf("a value for trusted-public-keys is not a Nix public key: %w", err)
		}
	}
	return nil
}

// appendLines adds lines at the end of a file in its own line ending,
// completing an unterminated last line first, under a comment if one is given.
func appendLines(buf []byte, comment string, lines []string) []byte {
	nl := "\n"
	if i := bytes.IndexByte(buf, '\n'); i > 0 && buf[i-1] == '\r' {
		nl = "\r\n"
	}
	if len(buf) > 0 && buf[len(buf)-1] != '\n' {
		buf = append(buf, nl...)
	}
	if comment != "" {
		if len(buf) > 0 && !bytes.HasSuffix(buf, []byte("\n"+nl)) {
			buf = append(buf, nl...)
		}
		// A comment is one line whatever the caller passed.
		comment = strings.Join(strings.Fields(comment), " ")
		buf = append(buf, "# "+comment+nl...)
	}
	for _, l := range lines {
		buf = append(buf, l+nl...)
	}
	return buf
}

// checkWritable returns a *ReadOnlyError when path cannot be edited in place.
// The write replaces the file through its directory (temp file and rename),
// so both must be writable; a file the admin made read-only is respected too.
func checkWritable(path string) error {
	ro := func(reason string) error { return &ReadOnlyError{Path: path, Reason: reason} }
	if inStore(path) {
		return ro("it is in the Nix store")
	}
	fi, err := os.Lstat(path)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	exists := err == nil
	if exists && fi.Mode()&fs.ModeSymlink != 0 {
		dest, err := os.Readlink(path)
		if err != nil {
			return err
		}
		if !filepath.IsAbs(dest) {
			dest = filepath.Join(filepath.Dir(path), dest)
		}
		if inStore(dest) {
			return ro("it is a symlink into the Nix store, generated by NixOS, nix-darwin or home-manager")
		}
	}
	resolved, err := resolve(path)
	if err != nil {
		return err
	}
	if inStore(resolved) {
		return ro("it resolves into the Nix store, generated by NixOS, nix-darwin or home-manager")
	}
	if exists {
		if err := access(resolved); err != nil {
			return ro(writeReason(err, "it"))
		}
	}
	dir := filepath.Dir(resolved)
	for {
		// A missing directory is made by Apply in its nearest existing parent.
		err := access(dir)
		if err == nil {
			return nil
		}
		if !errors.Is(err, fs.ErrNotExist) || filepath.Dir(dir) == dir {
			return ro(writeReason(err, "its directory"))
		}
		dir = filepath.Dir(dir)
	}
}

func writeReason(err error, what string) string {
	switch {
	case errors.Is(err, syscall.EROFS):
		return what + " is on a read-only file system"
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return what + " is not writable by this user"
	}
	return err.Error()
}

// wOK is access(2)'s W_OK, the same on every Unix.
const wOK = 0x2

func access(path string) error {
	if err := syscall.Access(path, wOK); err != nil {
		return &fs.PathError{Op: "access", Path: path, Err: err}
	}
	return nil
}

// resolve follows symlinks in path; for a file that does not exist yet it
// resolves the directory it would be created in, as far as that exists.
func resolve(path string) (string, error) {
	r, err := filepath.EvalSymlinks(path)
	if err == nil {
		return r, nil
	}
	if _, lerr := os.Lstat(path); lerr == nil {
		return "", fmt.Errorf("%q is a symlink to a missing file", path)
	}
	dir, base := filepath.Split(path)
	rdir, err := filepath.EvalSymlinks(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return path, nil
	}
	if err != nil {
		return "", err
	}
	return filepath.Join(rdir, base), nil
}

func inStore(path string) bool {
	return path == "/nix/store" || strings.HasPrefix(path, "/nix/store/")
}

// Diff renders the change as a unified diff, from /dev/null for a new file.
func (ch Change) Diff() string {
	oldName := ch.Path
	if !ch.Exists {
		oldName = "/dev/null"
	}
	return string(diff.Diff(oldName, ch.Old, ch.Path, ch.New))
}
