package main

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nixcache/nixcache/internal/audit"
)

// auditCommand summarises the audit log per client (docs/uploads.md).
func auditCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "audit",
		Usage:     "summarise the audit log per client",
		UsageText: "nixcache audit [FILE|-] [--since DURATION|TIME] [--client NAME] [--json]",
		Description: `Reads the audit log the publisher writes (one JSON record per request) and
prints, per client: its role in its latest record, requests, bytes sent
(narinfos, NARs, missing-path answers), bytes received (uploaded NARs,
accepted or not), uploads accepted, requests refused, when it was last
seen (UTC) and, with --json, the fingerprints of the keys it used.

FILE is the log written with 'nixcache publisher --audit-log FILE'; '-' or
no FILE reads standard input (when it is a file or a pipe), such as the
journal's copy of the publisher's output. Lines that are not records (the
publisher's own messages in the journal, a line cut short) are counted and
skipped; their content is never printed.

--since keeps the records from a time on: a duration back from now ("24h",
"90m", "7d"), a date ("2026-11-29", midnight local time) or an RFC 3339
time ("2026-11-29T05:40:00Z"). --client keeps one client's records.

EXAMPLES:
   nixcache audit /var/log/nixcache/audit.log
   journalctl -u nixcache-publisher -o cat | nixcache audit -
   nixcache audit /var/log/nixcache/audit.log --since 24h
   nixcache audit /var/log/nixcache/audit.log --client build-01 --since 2026-11-01
   nixcache audit /var/log/nixcache/audit.log --json | jq '.[] | select(.uploads > 0)'`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "since", Usage: "only records from `DURATION|TIME` on: 24h, 7d, 2026-11-29 or 2026-11-29T05:40:00Z"},
			&cli.StringFlag{Name: "client", Usage: "only the records of client `NAME`"},
			&cli.BoolFlag{Name: "json", Usage: "print JSON"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 1 {
				return errUsage{fmt.Errorf("one audit log at a time, got %d arguments", c.NArg())}
			}
			var filter audit.Filter
			if c.IsSet("since") {
				since, err := parseSince(c.String("since"), time.Now())
				if err != nil {
					return errUsage{err}
				}
				filter.Since = since
			}
			filter.Client = c.String("client")
			in, name, err := openAuditLog(c.Args().First())
			if err != nil {
				return err
			}
			defer in.Close()
			sums, skipped, err := audit.Summarise(in, filter)
			if err != nil {
				return fmt.Errorf("read the audit log %s: %w", name, err)
			}
			if skipped.Lines > 0 {
				ui.warnf("%s: %s, not audit records", name, skipped)
			}
			if c.Bool("json") {
				return ui.json(sums)
			}
			if len(sums) == 0 {
				if filter != (audit.Filter{}) {
					ui.notef("no records in %s match", name)
				} else {
					ui.notef("no records in %s", name)
				}
				return nil
			}
			rows := [][]string{{"CLIENT", "ROLE", "REQUESTS", "SENT", "RECEIVED", "UPLOADS", "REFUSED", "LAST-SEEN"}}
			for _, s := range sums {
				rows = append(rows, []string{
					cell(s.Client), cell(s.Role), strconv.FormatInt(s.Requests, 10),
					humanBytes(s.BytesSent), humanBytes(s.BytesReceived),
					strconv.FormatInt(s.Uploads, 10), strconv.FormatInt(s.Refusals, 10),
					s.LastSeen.UTC().Format(time.RFC3339),
				})
			}
			ui.table(rows)
			return nil
		},
	}
}

// openAuditLog opens FILE, or standard input for "-" or no FILE. Without
// FILE, a terminal (any character device) on standard input is refused:
// the command would otherwise wait for typing.
func openAuditLog(arg string) (io.ReadCloser, string, error) {
	switch arg {
	case "-":
		return io.NopCloser(os.Stdin), "standard input", nil
	case "":
		if st, err := os.Stdin.Stat(); err == nil && st.Mode()&fs.ModeCharDevice != 0 {
			return nil, "", errUsage{withHint(errors.New("no audit log given, and standard input is a terminal"),
				"name the log: nixcache audit /var/log/nixcache/audit.log",
				"or pipe it in: journalctl -u nixcache-publisher -o cat | nixcache audit -")}
		}
		return io.NopCloser(os.Stdin), "standard input", nil
	}
	f, err := os.Open(arg)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, "", withHint(fmt.Errorf("the audit log %q does not exist", arg),
				"the publisher writes it where --audit-log says; without it, to the journal: journalctl -u nixcache-publisher -o cat | nixcache audit -")
		}
		return nil, "", fmt.Errorf("open the audit log: %w", err)
	}
	if st, err := f.Stat(); err == nil && st.IsDir() {
		f.Close()
		return nil, "", fmt.Errorf("the audit log %q is a directory", arg)
	}
	return f, strconv.Quote(arg), nil
}

// parseSince reads --since: a duration back from now (Go's, or whole days
// "7d"), an RFC 3339 time, or a date at local midnight.
func parseSince(s string, now time.Time) (time.Time, error) {
	if days, ok := strings.CutSuffix(s, "d"); ok {
		if n, err := strconv.Atoi(days); err == nil && n >= 0 && n <= 100_000 {
			return now.AddDate(0, 0, -n), nil
		}
	}
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %q is negative: give how long ago, such as 24h", s)
		}
		return now.Add(-d), nil
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.ParseInLocation("2006-01-02", s, time.Local); err == nil {
		return t, nil
	}
	return time.Time{}, withHint(fmt.Errorf("--since %q is neither a duration nor a time", s),
		"give a duration back from now (24h, 90m, 7d), a date (2026-11-29) or an RFC 3339 time (2026-11-29T05:40:00Z)")
}

// humanBytes shows a byte count in powers of 1024, one decimal.
func humanBytes(n int64) string {
	if n < 1024 {
		return fmt.Sprintf("%d B", n)
	}
	units := []string{"KiB", "MiB", "GiB", "TiB", "PiB", "EiB"}
	v, i := float64(n)/1024, 0
	for v >= 1024 && i < len(units)-1 {
		v /= 1024
		i++
	}
	return fmt.Sprintf("%.1f %s", v, units[i])
}

// cell shows a string from the log in one table cell: no escape sequences,
// no line breaks or tabs to shift the columns, "-" for nothing.
func cell(s string) string {
	if s == "" {
		return "-"
	}
	s = printable(s)
	return strings.NewReplacer("\n", `\n`, "\t", `\t`, " ", `\x20`).Replace(s)
}
