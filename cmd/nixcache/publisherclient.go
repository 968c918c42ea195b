package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/nixcache/nixcache/internal/audit"
	"github.com/nixcache/nixcache/internal/publish"
)

// publisherClient is serve's side of the publisher's Unix socket
// (docs/uploads.md): it hands uploads over and writes the audit log there.
type publisherClient struct {
	http *http.Client
	// The login's registry name and its SSH key's fingerprint, set once
	// serve knows who logged in.
	client  string
	keyHash string
}

func newPublisherClient(socket string) *publisherClient {
	return &publisherClient{
		http: &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			MaxIdleConnsPerHost: 2,
		}},
	}
}

// Upload relays an upload and the publisher's answer.
func (p *publisherClient) Upload(ctx context.Context, hash string, body io.Reader) (int, string) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://publisher/upload/"+hash, body)
	if err != nil {
		return http.StatusInternalServerError, "the cache failed"
	}
	req.Header.Set(publish.HeaderClient, p.client)
	req.Header.Set(publish.HeaderKey, p.keyHash)
	resp, err := p.http.Do(req)
	if err != nil {
		// Standard error reaches the client's side of the channel (the
		// substituter logs it): a registered client, told which socket
		// failed, so that its admin can tell the cache's.
		fmt.Fprintf(os.Stderr, "nixcache: the publisher: %v\n", err)
		return http.StatusServiceUnavailable, "the cache cannot take uploads now (its publisher is not running)"
	}
	defer resp.Body.Close()
	msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	return resp.StatusCode, strings.TrimSpace(string(msg))
}

// AuditsUpload says whether the publisher wrote the audit record of an
// upload it answered with status (binarycache.SelfAuditing): it does for
// the imports, whose records must stand even if serve dies before the
// answer arrives.
func (p *publisherClient) AuditsUpload(status int) bool { return publish.AuditsUpload(status) }

// Audit writes one record.
func (p *publisherClient) Audit(rec audit.Record) error {
	body, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://publisher/audit", bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := p.http.Do(req)
	if err != nil {
		return fmt.Errorf("the audit log (the publisher's socket): %w", err)
	}
	defer resp.Body.Close()
	io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
	if resp.StatusCode != http.StatusNoContent {
		return fmt.Errorf("the publisher refused an audit record: %s", resp.Status)
	}
	return nil
}
