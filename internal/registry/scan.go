package registry

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

// scan reads the registry's text before the TOML decoder does and refuses,
// at the line it is on, anything outside the registry's shape: settings
// other than version and clients, fields other than a client's key, role
// and comment, lists, tables of tables deeper than clients.NAME.FIELD. A
// registry may come from a pull request; a TOML decoder given deeply nested
// values or long dotted keys spends time and memory quadratic in their size
// (gigabytes for 40 KB), while this pass is linear and keeps nothing but the
// lines Parse's errors name. It reads TOML's syntax (strings, comments,
// dotted and quoted keys, inline tables), so a file edited by hand in
// another style still reads; anything it cannot read it refuses, so the
// decoder never sees more than it does.
func scan(text string) (*shape, error) {
	s := &scanner{text: text, line: 1, shape: shape{clients: map[string]*clientLines{}}}
	if err := s.file(); err != nil {
		// A registry from a newer nixcache is outside this version's
		// shape: saying so helps more than naming the first new field.
		if v, verr := strconv.Atoi(s.versionText); verr == nil && !supportedVersion(v) {
			return nil, versionError(s.version, v)
		}
		return nil, fmt.Errorf("line %d: %w", s.line, err)
	}
	return &s.shape, nil
}

// shape holds the line of each definition that Parse may report on.
type shape struct {
	version     int    // 0 when the file has no version
	versionText string // its value, if unquoted
	clients     map[string]*clientLines
}

type clientLines struct {
	table, key, comment, role int // the first line defining the client, its key, its comment, its role
}

type scanner struct {
	text  string
	pos   int
	line  int
	table []string // the path of the last [table] header
	shape
}

func (s *scanner) file() error {
	for {
		s.skipBlank()
		if s.pos == len(s.text) {
			return nil
		}
		switch s.text[s.pos] {
		case '\n', '\r', '#':
		case '[':
			if err := s.header(); err != nil {
				return err
			}
		default:
			s.table = s.table[:len(s.table):len(s.table)] // keys below append to a copy
			if err := s.keyValue(s.table); err != nil {
				return err
			}
		}
		if err := s.endOfLine(); err != nil {
			return err
		}
	}
}

// header reads "[clients]" or "[clients.NAME]".
func (s *scanner) header() error {
	s.pos++
	if s.peek() == '[' {
		return errors.New("arrays of tables ([[...]]) are not part of a clients registry: each client is a table [clients.NAME]")
	}
	path, err := s.key(nil)
	if err != nil {
		return err
	}
	if s.skipBlank(); s.peek() != ']' {
		return errors.New(`a table header must end with "]"`)
	}
	s.pos++
	s.table = path
	return s.define(path, '{')
}

// keyValue reads "KEY = VALUE" below the table at prefix.
func (s *scanner) keyValue(prefix []string) error {
	path, err := s.key(prefix)
	if err != nil {
		return err
	}
	if s.skipBlank(); s.peek() != '=' {
		return errors.New(`expected "=" after a key`)
	}
	s.pos++
	s.skipBlank()
	kind := s.peek()
	if err := s.define(path, kind); err != nil {
		return err
	}
	switch kind {
	case '{':
		return s.inlineTable(path)
	case '"', '\'':
		return s.str()
	}
	start := s.pos
	err = s.bareValue()
	if len(path) == 1 && path[0] == "version" {
		s.versionText = s.text[start:s.pos]
	}
	return err
}

// inlineTable reads "{ KEY = VALUE, ... }" on one line, as TOML 1.0 writes it.
func (s *scanner) inlineTable(path []string) error {
	s.pos++
	for {
		if s.skipBlank(); s.peek() == '}' {
			s.pos++
			return nil
		}
		if err := s.keyValue(path[:len(path):len(path)]); err != nil {
			return err
		}
		switch s.skipBlank(); s.peek() {
		case ',':
			s.pos++
		case '}':
		default:
			return errors.New(`expected "," or "}" in an inline table, on one line`)
		}
	}
}

// define checks a key the file defines against the registry's shape and
// notes its line. kind is the first byte of its value, '{' for a table.
func (s *scanner) define(path []string, kind byte) error {
	table := kind == '{'
	switch {
	case path[0] == "version":
		if len(path) > 1 || table {
			return errors.New(`"version" is a number, as in "version = 1"`)
		}
		s.version = s.line
	case path[0] != "clients":
		return fmt.Errorf("unknown setting %q (known: version, clients)", path[0])
	case len(path) == 1 && !table:
		return errors.New(`"clients" is a table: each client is a table [clients.NAME] with key, role and comment`)
	case len(path) == 2 && !table, len(path) > 3:
		return fmt.Errorf("unexpected %q: each client is a table [clients.NAME] with key, role and comment", strings.Join(path, "."))
	case len(path) == 3 && path[2] != "key" && path[2] != "comment" && path[2] != "role":
		return fmt.Errorf("unknown field %q in client %q (known: key, role, comment)", path[2], path[1])
	case len(path) == 3 && table:
		return fmt.Errorf("%q is a string, not a table", strings.Join(path, "."))
	}
	if kind == '[' {
		return fmt.Errorf("%q is a list; a clients registry has none", strings.Join(path, "."))
	}
	if len(path) >= 2 && path[0] == "clients" {
		c := s.clients[path[1]]
		if c == nil {
			c = &clientLines{table: s.line}
			s.clients[path[1]] = c
		}
		if len(path) == 3 {
			switch path[2] {
			case "key":
				c.key = s.line
			case "comment":
				c.comment = s.line
			case "role":
				c.role = s.line
			}
		}
	}
	return nil
}

// key reads a dotted key of bare, "basic" or 'literal' parts and returns it
// after prefix. It stops at a fourth part: nothing in a registry is deeper.
func (s *scanner) key(prefix []string) ([]string, error) {
	path := prefix
	for {
		s.skipBlank()
		if len(path) == 3 {
			return nil, errors.New("keys nest at most three deep in a clients registry (clients.NAME.FIELD)")
		}
		start := s.pos
		switch s.peek() {
		case '"', '\'':
			q := s.text[s.pos]
			end := strings.IndexAny(s.text[s.pos+1:], string(q)+"\\\n")
			if end < 0 || s.text[s.pos+1+end] != q {
				return nil, errors.New(`a quoted key must end on its line, and be written without "\" escapes`)
			}
			path = append(path, s.text[s.pos+1:s.pos+1+end])
			s.pos += end + 2
		default:
			for s.pos < len(s.text) && isBare(s.text[s.pos]) {
				s.pos++
			}
			if s.pos == start {
				return nil, errors.New("expected a key: letters, digits, '_' and '-', or a quoted name")
			}
			path = append(path, s.text[start:s.pos])
		}
		if s.skipBlank(); s.peek() != '.' {
			return path, nil
		}
		s.pos++
	}
}

// str skips a string of any of TOML's four kinds.
func (s *scanner) str() error {
	q := s.text[s.pos]
	delim := string(q)
	if strings.HasPrefix(s.text[s.pos:], strings.Repeat(delim, 3)) {
		delim = strings.Repeat(delim, 3)
	}
	s.pos += len(delim)
	for s.pos < len(s.text) {
		c := s.text[s.pos]
		if c == '\\' && q == '"' && s.peekAt(1) != '\n' {
			// An escaped quote does not end the string; an escaped line
			// break is still a line break, counted below.
			s.pos += 2
			continue
		}
		switch {
		case c == '\n' && len(delim) == 1:
			return errors.New("a string must end on its line (use \"\"\" for one that spans lines)")
		case c == '\n':
			s.line++
		case c == q && strings.HasPrefix(s.text[s.pos:], delim):
			s.pos += len(delim)
			// A multi-line string may end with one or two of its quotes
			// right before the closing three.
			for i := 0; i < 2 && len(delim) == 3 && s.peek() == q; i++ {
				s.pos++
			}
			return nil
		}
		s.pos++
	}
	return errors.New("a string is not closed before the end of the file")
}

// bareValue skips a number or another unquoted value; the decoder reads it.
func (s *scanner) bareValue() error {
	start := s.pos
	for s.pos < len(s.text) && (isBare(s.text[s.pos]) || strings.IndexByte("+.:", s.text[s.pos]) >= 0) {
		s.pos++
	}
	if s.pos == start {
		return errors.New("expected a value: a string in quotes or a number")
	}
	return nil
}

// endOfLine accepts blanks and a comment up to the end of a line.
func (s *scanner) endOfLine() error {
	s.skipBlank()
	if s.peek() == '#' {
		if end := strings.IndexByte(s.text[s.pos:], '\n'); end >= 0 {
			s.pos += end
		} else {
			s.pos = len(s.text)
		}
	}
	switch {
	case s.pos == len(s.text):
		return nil
	case strings.HasPrefix(s.text[s.pos:], "\r\n"):
		s.pos++
		fallthrough
	case s.text[s.pos] == '\n':
		s.pos++
		s.line++
		return nil
	}
	return errors.New("unexpected text after the end of a setting: one setting per line")
}

func (s *scanner) skipBlank() {
	for s.pos < len(s.text) && (s.text[s.pos] == ' ' || s.text[s.pos] == '\t') {
		s.pos++
	}
}

func (s *scanner) peek() byte { return s.peekAt(0) }

func (s *scanner) peekAt(i int) byte {
	if s.pos+i < len(s.text) {
		return s.text[s.pos+i]
	}
	return 0
}

func isBare(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}
