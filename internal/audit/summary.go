package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"time"
)

// Filter chooses the records Summarise counts.
type Filter struct {
	Since  time.Time // records before it are left out; zero: all
	Client string    // only this client's records; empty: all
}

// Summary is one client's activity in the log.
type Summary struct {
	Client        string    `json:"client"`
	Role          string    `json:"role"` // of the client's latest record
	Requests      int64     `json:"requests"`
	BytesSent     int64     `json:"bytes_sent"`     // narinfo, nar and missing answers
	BytesReceived int64     `json:"bytes_received"` // uploaded NARs, accepted or not
	Uploads       int64     `json:"uploads"`        // uploads answered 200 or 201
	Refusals      int64     `json:"refusals"`       // refused requests, and uploads answered 4xx
	LastSeen      time.Time `json:"last_seen"`
	Keys          []string  `json:"keys"` // distinct key fingerprints, sorted
}

// Skipped counts the lines Summarise could not read as records. Their
// content is never repeated: a log may hold anything.
type Skipped struct {
	Lines int
	First int // line number of the first, from 1
}

func (s Skipped) String() string {
	if s.Lines == 1 {
		return fmt.Sprintf("1 line skipped (line %d)", s.First)
	}
	return fmt.Sprintf("%d lines skipped (first: line %d)", s.Lines, s.First)
}

// Memory bounds: a summary holds one entry per client and a few keys
// each, whatever the log's length.
const (
	maxClients       = 100_000
	maxKeysPerClient = 64
)

// Summarise reads an audit log line by line (a file the publisher wrote, or
// `journalctl -o cat` of its journal) and sums it per client, sorted by
// client name. A line that is not a record (malformed, longer than
// MaxLine, the publisher's own messages in the journal) is counted in
// Skipped; an empty line is ignored. Records from newer versions with more
// fields are read, unlike Decode's: a log outlives the program.
func Summarise(r io.Reader, f Filter) ([]Summary, Skipped, error) {
	var skipped Skipped
	skip := func(n int) {
		if skipped.Lines == 0 {
			skipped.First = n
		}
		skipped.Lines++
	}
	byClient := map[string]*Summary{}
	keys := map[string]map[string]bool{}
	br := bufio.NewReaderSize(r, MaxLine)
	for n := 1; ; n++ {
		text, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			skip(n)
			for errors.Is(err, bufio.ErrBufferFull) {
				_, err = br.ReadSlice('\n')
			}
			if err == io.EOF {
				break
			}
			if err != nil {
				return nil, skipped, err
			}
			continue
		}
		if err != nil && err != io.EOF {
			return nil, skipped, err
		}
		if len(text) == 0 && err == io.EOF {
			break
		}
		if rec, ok := parseLine(text); !ok {
			if len(bytes.TrimSpace(text)) > 0 {
				skip(n)
			}
		} else if include(rec, f) {
			s := byClient[rec.Client]
			if s == nil {
				if len(byClient) == maxClients {
					return nil, skipped, fmt.Errorf("more than %d clients in the log (line %d): is it an audit log?", maxClients, n)
				}
				s = &Summary{Client: rec.Client, Keys: []string{}}
				byClient[rec.Client] = s
				keys[rec.Client] = map[string]bool{}
			}
			add(s, keys[rec.Client], rec)
		}
		if err == io.EOF {
			break
		}
	}
	out := make([]Summary, 0, len(byClient))
	for _, s := range byClient {
		slices.Sort(s.Keys)
		out = append(out, *s)
	}
	slices.SortFunc(out, func(a, b Summary) int {
		switch {
		case a.Client < b.Client:
			return -1
		case a.Client > b.Client:
			return 1
		}
		return 0
	})
	return out, skipped, nil
}

// line is what a summary reads of a record: the path, the longest
// string, is not kept.
type line struct {
	Time   time.Time `json:"time"`
	Client string    `json:"client"`
	Key    string    `json:"key"`
	Role   string    `json:"role"`
	Op     string    `json:"op"`
	Bytes  int64     `json:"bytes"`
	Status int       `json:"status"`
}

// parseLine reads a record leniently (unknown fields allowed) but asks for
// what a summary needs: a time and an op.
func parseLine(text []byte) (line, bool) {
	text = bytes.TrimSpace(text)
	if len(text) == 0 || text[0] != '{' {
		return line{}, false
	}
	var r line
	if err := json.Unmarshal(text, &r); err != nil || r.Time.IsZero() || r.Op == "" || r.Bytes < 0 {
		return line{}, false
	}
	return r, true
}

func include(r line, f Filter) bool {
	return (f.Client == "" || r.Client == f.Client) && (f.Since.IsZero() || !r.Time.Before(f.Since))
}

func add(s *Summary, keys map[string]bool, r line) {
	s.Requests++
	switch r.Op {
	case OpNarinfo, OpNar, OpMissing:
		s.BytesSent = sum(s.BytesSent, r.Bytes)
	case OpUpload:
		s.BytesReceived = sum(s.BytesReceived, r.Bytes)
		switch {
		case r.Status == 200 || r.Status == 201:
			s.Uploads++
		case r.Status >= 400 && r.Status < 500:
			// A bad hash, a missing reference, a NAR too large: the
			// cache refused what the client sent.
			s.Refusals++
		}
	case OpRefused:
		s.Refusals++
	}
	if !r.Time.Before(s.LastSeen) {
		s.LastSeen = r.Time.UTC()
		s.Role = r.Role
	}
	if r.Key != "" && !keys[r.Key] && len(keys) < maxKeysPerClient {
		keys[r.Key] = true
		s.Keys = append(s.Keys, r.Key)
	}
}

// sum saturates: a log that claims more bytes than int64 holds shows the
// most it can, not a negative number.
func sum(a, b int64) int64 {
	if a > math.MaxInt64-b {
		return math.MaxInt64
	}
	return a + b
}
