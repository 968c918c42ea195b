package registry

import (
	"slices"
	"strconv"
	"strings"

	"github.com/BurntSushi/toml"
)

// lineIndex finds the line that defines a key. The TOML library reports
// positions for syntax errors but not for keys it parsed, so this reads the
// text again: each table header and each "key = value" line, with the full
// dotted path of what it defines.
type lineIndex []definition

type definition struct {
	line int
	path []string
}

func newLineIndex(text string) lineIndex {
	var idx lineIndex
	var table []string
	inString := "" // the delimiter of a multi-line string being skipped
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if inString != "" {
			if strings.Count(line, inString)%2 == 1 {
				inString = ""
			}
			continue
		}
		switch {
		case line == "" || line[0] == '#':
		case line[0] == '[':
			open := strings.TrimLeft(line, "[")
			if path, rest, ok := parseKeyPath(open); ok && strings.HasPrefix(rest, "]") {
				table = path
				idx = append(idx, definition{n + 1, path})
			}
		default:
			path, rest, ok := parseKeyPath(line)
			if !ok || !strings.HasPrefix(rest, "=") {
				continue
			}
			idx = append(idx, definition{n + 1, append(slices.Clone(table), path...)})
			for _, delim := range []string{`"""`, `'''`} {
				if strings.Count(rest, delim)%2 == 1 {
					inString = delim
				}
			}
		}
	}
	return idx
}

// find returns the line that defines key: the line naming it exactly, else
// the first that defines something inside it, else the closest enclosing
// definition (an inline table, a table header); 0 if none does.
func (idx lineIndex) find(key toml.Key) int {
	for _, d := range idx {
		if slices.Equal(d.path, key) {
			return d.line
		}
	}
	for _, d := range idx {
		if len(d.path) > len(key) && slices.Equal(d.path[:len(key)], key) {
			return d.line
		}
	}
	best, bestLen := 0, 0
	for _, d := range idx {
		if len(d.path) < len(key) && len(d.path) > bestLen && slices.Equal(key[:len(d.path)], d.path) {
			best, bestLen = d.line, len(d.path)
		}
	}
	return best
}

// parseKeyPath reads a dotted TOML key (bare, "basic" or 'literal' parts)
// from the start of s and returns it with the rest of s, trimmed.
func parseKeyPath(s string) (path []string, rest string, ok bool) {
	for {
		s = strings.TrimLeft(s, " \t")
		var part string
		switch {
		case strings.HasPrefix(s, `"`):
			end := 1
			for end < len(s) && s[end] != '"' {
				if s[end] == '\\' {
					end++
				}
				end++
			}
			if end >= len(s) {
				return nil, "", false
			}
			unq, err := strconv.Unquote(s[:end+1])
			if err != nil {
				unq = s[1:end]
			}
			part, s = unq, s[end+1:]
		case strings.HasPrefix(s, "'"):
			end := strings.IndexByte(s[1:], '\'')
			if end < 0 {
				return nil, "", false
			}
			part, s = s[1:end+1], s[end+2:]
		default:
			end := strings.IndexFunc(s, func(r rune) bool {
				return !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '_' || r == '-')
			})
			if end < 0 {
				end = len(s)
			}
			if end == 0 {
				return nil, "", false
			}
			part, s = s[:end], s[end:]
		}
		path = append(path, part)
		s = strings.TrimLeft(s, " \t")
		if !strings.HasPrefix(s, ".") {
			return path, s, true
		}
		s = s[1:]
	}
}
