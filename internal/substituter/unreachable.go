package substituter

import "net/http"

// What Nix is told while the cache cannot be reached decides whether it
// builds at once, waits, or fails; measured with Nix 2.8 and fallback = true:
//
//   - a 503 (or any 5xx but 501, 505 and 511) is "transient": Nix retries
//     each request five times with backoff, 4.3 s per request, and then
//     disables the substituter;
//   - a disabled substituter then aborts a nix-build whose outputs it was
//     asked for: "terminate called after throwing an instance of
//     'nix::SubstituterDisabled'" (NixOS/nix#6445), exit 134, no build;
//   - a 404 is "not in this cache": Nix builds at once. It remembers the
//     miss for narinfo-cache-negative-ttl (an hour), as for any 404;
//   - nix-cache-info failing with a non-transient status makes Nix leave
//     the substituter out for that command, without retries or abort.
//
// So a narinfo asked for while the cache is down is answered 404 (missing),
// and nix-cache-info, when it was never fetched, 501 (unreachable).

// missing answers a narinfo request that cannot be put to the cache.
func missing(w http.ResponseWriter) {
	w.Header().Set("Cache-Control", "no-store")
	http.Error(w, "nixcache substituter: the cache is unreachable", http.StatusNotFound)
}

// unreachable answers nix-cache-info when the cache never answered it.
func unreachable(w http.ResponseWriter, why string) {
	http.Error(w, "nixcache substituter: "+why, http.StatusNotImplemented)
}
