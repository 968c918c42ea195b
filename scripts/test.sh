#!/usr/bin/env bash
# Runs every check and test, against the real nix-daemon and sshd. As root.
set -euo pipefail
cd "$(dirname "$0")/.."
# sshd and nix-daemon live in sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

scripts/deps.sh

echo "== gofmt, go vet" >&2
unformatted=$(gofmt -l $(git ls-files '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
go vet ./...

echo "== nix-instantiate --parse" >&2
for f in $(git ls-files '*.nix'); do
  nix-instantiate --parse "$f" >/dev/null
done

echo "== go test" >&2
go test -race -count=1 -timeout 20m ./...
