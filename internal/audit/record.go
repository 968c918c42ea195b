// Package audit owns the cache's audit log: one JSON record per request
// (docs/uploads.md#the-audit-log), written by one process, and summarised
// per client.
package audit

import "time"

// Operations a record can be about.
const (
	OpNarinfo = "narinfo"
	OpNar     = "nar"
	OpUpload  = "upload"
	OpMissing = "missing"
	OpRefused = "refused"
	// OpSession is a whole nix-store --serve (or nix-daemon --stdio)
	// session: nixcache hands the channel to Nix and sees none of its
	// requests.
	OpSession = "session"
)

// Record is one request. Key is the SSH key's fingerprint, never the key.
type Record struct {
	Time     time.Time `json:"time"`
	Client   string    `json:"client"`
	Key      string    `json:"key"`
	Role     string    `json:"role"`
	Op       string    `json:"op"`
	Request  string    `json:"request,omitempty"`
	Path     string    `json:"path,omitempty"`
	Bytes    int64     `json:"bytes"`
	Status   int       `json:"status"`
	Duration float64   `json:"duration_ms"`
}
