// Package substituter serves Nix's binary-cache HTTP API on loopback from a
// cache reached over one multiplexed SSH connection.
//
// Nix's ssh:// stores pay two round trips per path, one path at a time;
// its HTTP substituter asks for many paths at once. So the client runs this
// small HTTP server, which Nix uses as "http://127.0.0.1:PORT", and which
// forwards each request over a session channel of a single SSH connection
// whose exec command is "nixcache-binary-cache": the cache's `nixcache
// serve` speaks HTTP/1.1 on that channel. Only three shapes of read are
// forwarded (/nix-cache-info, /HASH.narinfo, /nar/HASH-NARHASH.nar), so Nix,
// or anything else on this machine, can ask the cache for nothing else.
//
// Uploads (upload.go, nixstore.go) come from root and the --upload-user
// users only, as the kernel says whose socket each comes from: `nixcache
// push`'s requests are relayed as they are, and `nix copy --to
// http://...`'s NAR file and narinfo PUTs become one upload each.
//
// Around the forwarding:
//
//   - narinfo answers are kept in memory with Nix's own TTLs, so a path
//     asked for twice costs one round trip;
//   - a narinfo request means Nix lacks the path, so the narinfos of its
//     closure and the path's NAR are fetched ahead of Nix's requests, the
//     NAR into a spool on disk whose total size is bounded; Nix then reads
//     it from the spool, or follows the download while it arrives;
//   - NARs are streamed, never held in memory whole;
//   - while the cache cannot be reached, every request is answered at once
//     in the way that makes Nix build instead (see unreachable.go), and the
//     connection is made again in the background with backoff.
package substituter
