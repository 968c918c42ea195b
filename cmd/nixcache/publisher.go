package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/nixcache/nixcache/internal/audit"
	"github.com/nixcache/nixcache/internal/daemon"
	"github.com/nixcache/nixcache/internal/nixkey"
	"github.com/nixcache/nixcache/internal/publish"
)

func publisherCommand(ui *ui) *cli.Command {
	return &cli.Command{
		Name:      "publisher",
		Usage:     "import, sign and publish uploads; write the audit log (a service, as root)",
		UsageText: "nixcache publisher [--listen SOCKET] [--registry FILE] [--secret-key-file FILE] [--roots DIR] [--max-nar-size SIZE] [--allow-user USER]... [--audit-log FILE]",
		Description: `The privileged half of uploads (docs/uploads.md), run as a service beside
the cache account's 'nixcache serve --publisher SOCKET'. It holds the cache's
secret key, which serve never sees, and answers on a Unix socket only to root
and the --allow-user users (the kernel's word, SO_PEERCRED; anyone else's
connection is closed unread).

For each upload it checks that the client is in the registry with that key and
the push role, that the narinfo is sound, NarSize within --max-nar-size and
every reference valid; then it signs the path with the cache key and imports it
through the Nix daemon as an untrusted user, the NAR hashed and counted on its
way. The daemon must trust the cache's key: put 'nixcache key public' in
trusted-public-keys in the server's nix.conf. A path the daemon takes gets a
root, DIR/pushed/CLIENT/BASENAME (--roots).

It also writes the audit log, one JSON line per request: to standard output
(the journal) or appended to --audit-log FILE (created 0640).

The socket is created mode 0660, owned by the group of the first --allow-user,
in a directory made if missing; a socket passed by systemd (LISTEN_FDS) is used
as it is. The secret key file defaults to secret-key-file from the config file,
else /var/lib/nixcache/secret-key; one others can read is refused.

EXAMPLES:
   nixcache publisher --allow-user nixcache
   nixcache publisher --allow-user nixcache --audit-log /var/log/nixcache/audit.log
   nixcache publisher --listen /run/nixcache/publisher.sock --max-nar-size 1G \
     --secret-key-file /var/lib/nixcache/secret-key --allow-user nixcache`,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "listen", Value: publish.DefaultSocket, Usage: "listen on the Unix socket `SOCKET`"},
			registryFlag(),
			&cli.StringFlag{Name: "secret-key-file", Usage: "sign with the secret key in `FILE`"},
			&cli.StringFlag{Name: "roots", Value: publish.DefaultRoots, Usage: "root published paths under `DIR`/pushed/CLIENT/"},
			&cli.StringFlag{Name: "max-nar-size", Value: "4G", Usage: "refuse NARs larger than `SIZE` (K, M, G suffixes)"},
			&cli.StringSliceFlag{Name: "allow-user", Usage: "also accept connections from `USER` (the cache account); root always may"},
			&cli.StringFlag{Name: "audit-log", Usage: "append the audit log to `FILE` instead of standard output"},
			configFlag(),
		},
		OnUsageError: usageError,
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return errUsage{fmt.Errorf("publisher takes no arguments, got %q", c.Args().First())}
			}
			maxNar, err := parseSize(c.String("max-nar-size"))
			if err != nil || maxNar == 0 {
				return errUsage{fmt.Errorf("--max-nar-size: give a size in bytes, such as 4294967296 or 4G")}
			}
			allowed, gid, err := allowedUIDs(c.StringSlice("allow-user"))
			if err != nil {
				return err
			}
			cfg, err := loadConfig(c)
			if err != nil {
				return err
			}
			keyFile := firstNonEmpty(c.String("secret-key-file"), cfg.SecretKeyFile)
			key, err := readPublisherKey(keyFile)
			if err != nil {
				return err
			}
			reg, err := registryPath(c)
			if err != nil {
				return err
			}
			auditLog := audit.NewWriter(ui.stdout)
			if path := c.String("audit-log"); path != "" {
				if auditLog, err = audit.OpenFile(path); err != nil {
					return err
				}
				defer auditLog.Close()
			}
			l, err := publisherListener(c.String("listen"), gid)
			if err != nil {
				return err
			}
			logf := func(msg string) { fmt.Fprintf(ui.stderr, "nixcache publisher: %s\n", printable(msg)) }
			pl := &publish.PeerListener{UnixListener: l, Allowed: allowed, Refused: func(uid uint32, err error) {
				if err != nil {
					logf(fmt.Sprintf("closed a connection whose peer is unknown: %v", err))
					return
				}
				logf(fmt.Sprintf("closed a connection from uid %d, which is not allowed (--allow-user)", uid))
			}}
			p := publish.New(publish.Config{
				Registry: reg, Key: key, Roots: c.String("roots"), MaxNarSize: uint64(maxNar),
				DaemonSocket: daemon.SocketPath(), StoreDir: "/nix/store", Audit: auditLog, Log: logf,
			})
			srv := &http.Server{Handler: p, ReadHeaderTimeout: 30 * time.Second}
			logf(fmt.Sprintf("signing with key %s, listening on %s", key.Name(), l.Addr()))
			// SIGTERM (main's context) lets uploads in flight finish.
			go func() {
				<-c.Context.Done()
				shut, cancel := context.WithTimeout(context.Background(), 30*time.Second)
				defer cancel()
				srv.Shutdown(shut)
			}()
			if err := srv.Serve(pl); !errors.Is(err, http.ErrServerClosed) {
				return err
			}
			return nil
		},
	}
}

// readPublisherKey reads the cache key at start, so that a service with an
// unreadable key fails at once, not at its first upload. Unlike sign, a
// key others can read is refused: this process holds it for good.
func readPublisherKey(path string) (nixkey.SecretKey, error) {
	key, loose, err := nixkey.ReadSecretKeyFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return key, withHint(fmt.Errorf("no secret key file at %q", path),
			"make the cache's key with 'nixcache keygen', or pass --secret-key-file")
	}
	if err != nil {
		return key, err
	}
	if loose {
		return nixkey.SecretKey{}, withHint(fmt.Errorf("the secret key file %q can be read by users other than its owner", path),
			fmt.Sprintf("chmod 600 %q, then start the publisher again", path))
	}
	return key, nil
}

// allowedUIDs is root and the --allow-user users; gid is the first user's
// group, which gets the socket.
func allowedUIDs(names []string) (uids []uint32, gid int, err error) {
	uids, gid = []uint32{0}, -1
	for _, name := range names {
		u, err := user.Lookup(name)
		if err != nil {
			return nil, 0, withHint(fmt.Errorf("--allow-user %s: %w", name, err), "name the account 'nixcache serve' runs as")
		}
		uid, err := strconv.ParseUint(u.Uid, 10, 32)
		if err != nil {
			return nil, 0, fmt.Errorf("--allow-user %s: uid %q", name, u.Uid)
		}
		uids = append(uids, uint32(uid))
		if gid < 0 {
			if gid, err = strconv.Atoi(u.Gid); err != nil {
				return nil, 0, fmt.Errorf("--allow-user %s: gid %q", name, u.Gid)
			}
		}
	}
	return uids, gid, nil
}

// publisherListener is the socket systemd passed, or a new one at path:
// mode 0660, group gid (when >= 0), in a directory made if missing.
func publisherListener(path string, gid int) (*net.UnixListener, error) {
	passed, err := systemdSocket(path)
	if err != nil {
		return nil, err
	}
	if passed != nil {
		ul, ok := passed.(*net.UnixListener)
		if !ok {
			passed.Close()
			return nil, fmt.Errorf("the socket systemd passed is not a Unix socket: ListenStream=%s in the socket unit", path)
		}
		return ul, nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, err
	}
	// A socket left by a publisher that stopped is replaced; anything else
	// at that path is not ours to remove.
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%q exists and is not a socket", path)
		}
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, withHint(fmt.Errorf("another publisher is listening on %q", path), "stop it first, or choose another --listen")
		}
		if err := os.Remove(path); err != nil {
			return nil, err
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	if err := os.Chmod(path, 0o660); err == nil && gid >= 0 {
		err = os.Chown(path, -1, gid)
	}
	if err != nil {
		l.Close()
		return nil, err
	}
	return l, nil
}
