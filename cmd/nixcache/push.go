package main

import (
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/push"
)

func pushCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "push",
		Usage:     "upload store paths to the cache, through the local substituter",
		UsageText: "nixcache push [--to URL] [--recursive] [--jobs N] [--json] PATH...",
		Description: `Uploads each PATH the cache lacks (with --recursive, every path of their
closures the cache lacks) through 'nixcache client substituter', which relays
them to the cache over its SSH connection. The cache checks each NAR against
its hash, imports it, signs it with the cache's key and publishes it; this
machine's key needs the push role ('nixcache clients set-role NAME push' on
the server). Only root and the substituter's --upload-user users may upload.

One question tells which paths the cache has already; they are skipped.
Up to --jobs uploads run at once, each path after the references it needs,
each NAR streamed from the Nix daemon. A path that fails takes the paths that
refer to it with it; the others go on, and the exit status is 1. Without
--recursive, the references of each PATH must be in the cache already or be
pushed too: nothing is uploaded otherwise.

PATH may be a store path, a file inside one, or a symlink into the store
such as ./result. --to is the substituter's http URL on loopback (the
substituter listens nowhere else), default http://` + defaultListen + `.

EXAMPLES:
   nixcache push --recursive ./result
   nixcache push /nix/store/...-hello-2.12 --jobs 16
   nixcache push --recursive --json $(nix-build --no-out-link)`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "to", Value: "http://" + defaultListen, Usage: "upload through the substituter at `URL` (http on loopback)"},
			&cli.BoolFlag{Name: "recursive", Aliases: []string{"r"}, Usage: "push the closure of each PATH, not just PATH"},
			&cli.IntFlag{Name: "jobs", Aliases: []string{"j"}, Value: push.DefaultJobs, Usage: "run up to `N` uploads at once"},
			&cli.BoolFlag{Name: "json", Usage: "print a JSON report"},
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() == 0 {
				return errUsage{errors.New("no paths given: name the store paths to push (./result, /nix/store/...)")}
			}
			if c.Int("jobs") < 1 {
				return errUsage{fmt.Errorf("--jobs %d: give at least 1", c.Int("jobs"))}
			}
			if _, err := push.ParseURL(c.String("to")); err != nil {
				return errUsage{err}
			}
			prog := ui.progress("pushed")
			res, err := push.Push(c.Context, push.Options{
				To:        c.String("to"),
				Paths:     c.Args().Slice(),
				Recursive: c.Bool("recursive"),
				Jobs:      c.Int("jobs"),
				Socket:    daemon.SocketPath(),
				Progress: func(p push.Progress) {
					prog.show(fmt.Sprintf("pushed %d/%d paths, %s/%s MiB", p.Pushed, p.Total, mib(p.Sent), mib(p.Bytes)), p.Pushed == p.Total)
				},
			})
			prog.clear()
			var incomplete *push.IncompleteError
			if err != nil && !errors.As(err, &incomplete) {
				return pushHints(err, nil)
			}
			if c.Bool("json") {
				if jerr := ui.json(res); jerr != nil {
					return jerr
				}
			} else {
				ui.pushed(res)
			}
			if err != nil {
				return pushHints(err, res.Failed)
			}
			return nil
		},
	}
}

// pushHints says what to do about a push that failed, as a whole or for
// some paths.
func pushHints(err error, failed []push.Failure) error {
	errs := []error{err}
	for _, f := range failed {
		errs = append(errs, f.Err)
	}
	var hints []string
	var missing *push.MissingReferencesError
	if errors.As(err, &missing) {
		hints = append(hints, "push them too, with --recursive (it skips what the cache has)")
	}
	forbidden, localUser, unreachable := false, false, false
	for _, e := range errs {
		var se *push.StatusError
		if errors.As(e, &se) && se.Status == http.StatusForbidden {
			// The substituter's own refusals name it; the cache's do not.
			if strings.HasPrefix(se.Message, "nixcache substituter:") {
				localUser = true
			} else {
				forbidden = true
			}
		}
		var ue *push.UnreachableError
		unreachable = unreachable || errors.As(e, &ue)
	}
	if forbidden {
		hints = append(hints, "this client's key has the pull role: ask the cache's admin for `nixcache clients set-role NAME push`")
	}
	if localUser {
		hints = append(hints, "run push as root, or as a user the substituter is started for with --upload-user USER")
	}
	if unreachable {
		hints = append(hints, "is `nixcache client substituter` running? see docs/client.md")
	}
	if len(hints) == 0 {
		return err
	}
	return withHint(err, hints...)
}

// mib formats bytes in MiB with one decimal.
func mib(n int64) string { return fmt.Sprintf("%.1f", float64(n)/(1<<20)) }
