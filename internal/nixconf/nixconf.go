// Package nixconf reads nix.conf the way Nix does, so that what it reports is
// what Nix will use, and edits it the way a careful admin would: the smallest
// change that makes a value effective, every other byte left alone, a backup
// first, and a refusal when the file belongs to NixOS, nix-darwin or
// home-manager or when a later line would silently undo the edit.
//
// The reading follows Nix 2.8 and current Nix (src/libutil/config.cc): a line
// is cut at its first '#', split on spaces, tabs and carriage returns, and
// either includes a file in place or assigns a setting; assignments take
// effect in the order they are read, `NAME = ...` replacing and `extra-NAME =
// ...` appending. (Nix 2.16 to 2.19 applied an included file before the
// lines of the file including it, NixOS/nix#8719; that regression is not
// modelled.)
package nixconf

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"github.com/nixcache/nixcache/internal/atomicfile"
)

// DefaultSubstituter is Nix's value for substituters when nothing sets it
// (for a store in /nix/store, which is the only store nixcache serves).
const DefaultSubstituter = "https://cache.nixos.org/"

// DefaultTrustedKey is Nix's value for trusted-public-keys when nothing sets it.
const DefaultTrustedKey = "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="

// DefaultDir is where Nix looks for nix.conf unless NIX_CONF_DIR says otherwise.
const DefaultDir = "/etc/nix"

// customName is the file Determinate Nix's installer leaves to the admin: its
// nix.conf is rewritten by the installer and by determinate-nixd, and includes
// this one for local settings.
const customName = "nix.custom.conf"

// maxFileSize bounds what Load reads from one file: a nix.conf is a few
// kilobytes, and anything this large is not one.
const maxFileSize = 4 << 20

// defaults holds Nix's defaults for the list settings nixcache edits; other
// settings have defaults Nix computes at run time, which Effective does not guess.
var defaults = map[string][]string{
	"substituters":        {DefaultSubstituter},
	"trusted-public-keys": {DefaultTrustedKey},
}

// aliases maps the old names Nix still accepts (globals.hh) to the setting's
// name; `extra-` works with either.
var aliases = map[string]string{
	"binary-caches":            "substituters",
	"trusted-binary-caches":    "trusted-substituters",
	"binary-cache-public-keys": "trusted-public-keys",
	"build-chroot-dirs":        "sandbox-paths",
	"build-sandbox-paths":      "sandbox-paths",
}

// ownExtraNames are settings whose own name begins with "extra-": Nix looks a
// name up as written before treating "extra-" as "append to".
var ownExtraNames = map[string]bool{
	"extra-platforms": true,
}

// Config is a nix.conf as Nix reads it: Dir/nix.conf plus everything it
// includes, with every assignment in the order Nix applies it.
type Config struct {
	Dir   string   // the configuration directory (NIX_CONF_DIR, default /etc/nix)
	Main  string   // Dir/nix.conf
	Files []string // every file read, in the order first read (for mtime checks by the caller)
	// Skipped lists files that exist but could not be read (for example an
	// included secrets file readable only by root). Nix skips them silently,
	// so a caller that is not root should say its view may be incomplete.
	Skipped []string

	contents     map[string][]byte // what was read, by path as Nix names it
	assignments  []assignment      // in the order Nix applies them
	mainIncludes []string          // files Main includes, resolved
}

// assignment is one `NAME = VALUE...` line as applied.
type assignment struct {
	file   string
	line   int
	name   string // the setting, aliases resolved, without "extra-"
	extra  bool
	values []string
	// valueEnd is the offset in the file just after the last value token (or
	// after "=" when there is none): where an in-place edit inserts.
	valueEnd int
}

// SyntaxError locates a line of a configuration file that Nix would refuse.
// Its message says what is wrong in general terms and quotes nothing of the
// line: a file that does not parse may not be a nix.conf at all (an included
// secrets file, a token pasted on a line of its own), and nix.conf can hold
// access tokens.
type SyntaxError struct {
	File string
	Line int
	Msg  string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("%q line %d: %s", e.File, e.Line, e.Msg)
}

// ConfDir is the directory Nix reads nix.conf from: NIX_CONF_DIR, else /etc/nix.
func ConfDir() string {
	if dir := os.Getenv("NIX_CONF_DIR"); dir != "" {
		return dir
	}
	return DefaultDir
}

// Load reads dir/nix.conf and its includes (dir "" means DefaultDir). A
// missing nix.conf is an empty configuration, as it is for Nix; a line Nix
// would refuse, a missing `include` or an include loop is a *SyntaxError.
func Load(dir string) (*Config, error) {
	return load(dir, nil)
}

// load reads the configuration with override standing in for the files it
// names, so that a planned edit can be evaluated before it is written.
func load(dir string, override map[string][]byte) (*Config, error) {
	if dir == "" {
		dir = DefaultDir
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	c := &Config{Dir: abs, Main: filepath.Join(abs, "nix.conf"), contents: map[string][]byte{}}
	l := &loader{c: c, override: override}
	data, ok, err := l.read(c.Main)
	if err != nil {
		return nil, err
	}
	if ok {
		if err := l.apply(c.Main, data); err != nil {
			return nil, err
		}
	}
	return c, nil
}

type loader struct {
	c        *Config
	override map[string][]byte
	stack    []string // files being applied, outermost first
}

// read returns a file's contents; ok is false when it is missing or
// unreadable, which Nix treats alike for a file it has decided to read.
func (l *loader) read(path string) (data []byte, ok bool, err error) {
	if data, ok := l.override[path]; ok {
		l.record(path, data)
		return data, true, nil
	}
	data, _, err = atomicfile.ReadCapped(path, maxFileSize, "a nix.conf")
	var tooLarge *atomicfile.TooLargeError
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil, false, nil
	case errors.As(err, &tooLarge):
		return nil, false, err
	case err != nil:
		if !slices.Contains(l.c.Skipped, path) {
			l.c.Skipped = append(l.c.Skipped, path)
		}
		return nil, false, nil
	}
	l.record(path, data)
	return data, true, nil
}

func (l *loader) record(path string, data []byte) {
	if _, seen := l.c.contents[path]; !seen {
		l.c.Files = append(l.c.Files, path)
	}
	l.c.contents[path] = data
}

// exists is Nix's pathExists: lstat, so a dangling symlink exists (and then
// fails to read, which Nix ignores).
func (l *loader) exists(path string) bool {
	if _, ok := l.override[path]; ok {
		return true
	}
	_, err := os.Lstat(path)
	return err == nil || !(errors.Is(err, fs.ErrNotExist) || errors.Is(err, syscall.ENOTDIR))
}

func (l *loader) apply(path string, data []byte) error {
	l.stack = append(l.stack, path)
	defer func() { l.stack = l.stack[:len(l.stack)-1] }()

	for _, ln := range splitLines(data) {
		toks := ln.tokens
		if len(toks) == 0 {
			continue
		}
		synErr := func(format string, args ...any) error {
			return &SyntaxError{File: path, Line: ln.number, Msg: fmt.Sprintf(format, args...)}
		}
		if len(toks) < 2 && !strings.Contains(toks[0].text, "=") {
			return synErr("a line without \"=\": expected NAME = VALUE")
		}
		if len(toks) >= 2 && (toks[0].text == "include" || toks[0].text == "!include") {
			if len(toks) != 2 {
				return synErr("%s takes exactly one file name", toks[0].text)
			}
			inc := toks[1].text
			if !filepath.IsAbs(inc) {
				inc = filepath.Join(filepath.Dir(path), inc)
			}
			inc = filepath.Clean(inc)
			if len(l.stack) == 1 { // a line of Main itself
				l.c.mainIncludes = append(l.c.mainIncludes, inc)
			}
			if l.including(inc) {
				// Nix itself recurses until it crashes.
				return synErr("include loop: %q is already being read", inc)
			}
			if !l.exists(inc) {
				if toks[0].text == "!include" {
					continue
				}
				return synErr("included file %q not found (!include would make it optional)", inc)
			}
			incData, ok, err := l.read(inc)
			if err != nil {
				return err
			}
			if !ok {
				continue
			}
			if err := l.apply(inc, incData); err != nil {
				return err
			}
			continue
		}
		if len(toks) < 2 || toks[1].text != "=" {
			return synErr("expected NAME = VALUE, with \"=\" standing alone between spaces")
		}
		name, extra := Canonical(toks[0].text)
		a := assignment{file: path, line: ln.number, name: name, extra: extra, valueEnd: toks[1].end}
		for _, t := range toks[2:] {
			a.values = append(a.values, t.text)
			a.valueEnd = t.end
		}
		l.c.assignments = append(l.c.assignments, a)
	}
	return nil
}

// including reports whether path is being applied already, by name or, through
// a symlink or hard link, as the same file.
func (l *loader) including(path string) bool {
	for _, p := range l.stack {
		if p == path || sameFile(p, path) {
			return true
		}
	}
	return false
}

func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// Canonical returns the setting a name in nix.conf assigns, resolving Nix's
// old aliases, and whether it appends (`extra-NAME`) rather than replaces.
func Canonical(name string) (setting string, extra bool) {
	if ownExtraNames[name] {
		return name, false
	}
	if s, ok := aliases[name]; ok {
		return s, false
	}
	if rest, ok := strings.CutPrefix(name, "extra-"); ok && rest != "" {
		if s, ok := aliases[rest]; ok {
			return s, true
		}
		return rest, true
	}
	return name, false
}

type token struct {
	text string
	end  int // offset just past the token in the file
}

type line struct {
	number int
	tokens []token
}

// splitLines cuts data as Nix does: lines end at '\n' only, a '#' anywhere
// starts a comment, and tokens are separated by space, tab, CR or LF. CRLF
// files therefore read correctly.
func splitLines(data []byte) []line {
	var lines []line
	for start, n := 0, 1; start < len(data); n++ {
		end := bytes.IndexByte(data[start:], '\n')
		if end < 0 {
			end = len(data)
		} else {
			end += start
		}
		content := end
		if h := bytes.IndexByte(data[start:end], '#'); h >= 0 {
			content = start + h
		}
		ln := line{number: n}
		for i := start; i < content; {
			if isSpace(data[i]) {
				i++
				continue
			}
			j := i
			for j < content && !isSpace(data[j]) {
				j++
			}
			ln.tokens = append(ln.tokens, token{text: string(data[i:j]), end: j})
			i = j
		}
		lines = append(lines, ln)
		start = end + 1
	}
	return lines
}

func isSpace(b byte) bool {
	return b == ' ' || b == '\t' || b == '\r' || b == '\n'
}

// Get returns the value of a list setting after applying every assignment in
// order, honouring aliases and extra- prefixes; set is false when nothing
// assigns it. An `extra-` line appends to whatever came before it, which for a
// setting never replaced is Nix's default: Effective accounts for that.
// Values come back in file order, also for settings Nix keeps sorted.
func (c *Config) Get(name string) (values []string, set bool) {
	return c.evaluate(name, nil)
}

// Effective is Get with Nix's default for substituters and
// trusted-public-keys as the starting point, which is what Nix uses.
func (c *Config) Effective(name string) []string {
	setting, _ := Canonical(name)
	values, _ := c.evaluate(name, defaults[setting])
	return values
}

func (c *Config) evaluate(name string, base []string) (values []string, set bool) {
	setting, _ := Canonical(name)
	values = slices.Clone(base)
	for _, a := range c.assignments {
		if a.name != setting {
			continue
		}
		set = true
		if !a.extra {
			values = nil
		}
		values = append(values, a.values...)
	}
	return values, set
}

// lastPlain returns the last assignment that replaces setting, or nil.
func (c *Config) lastPlain(setting string) *assignment {
	for i := len(c.assignments) - 1; i >= 0; i-- {
		if a := &c.assignments[i]; a.name == setting && !a.extra {
			return a
		}
	}
	return nil
}

// Target is the file an edit goes to: Main, or, for Determinate Nix's layout
// (nix.conf including nix.custom.conf with include or !include), that
// nix.custom.conf, even if it does not exist yet, because the installer and
// determinate-nixd rewrite nix.conf itself.
func (c *Config) Target() string {
	custom := filepath.Join(c.Dir, customName)
	if slices.Contains(c.mainIncludes, custom) {
		return custom
	}
	return c.Main
}
