#!/usr/bin/env bash
# Runs every check and test, against the real nix-daemon and sshd. As root.
set -euo pipefail
cd "$(dirname "$0")/.."
# sshd and nix-daemon live in sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

scripts/deps.sh

echo "== vendor/ matches go.mod and go.sum" >&2
# The flake builds with the committed vendor/ (vendorHash = null), so it must
# be exactly what 'go mod vendor' makes from go.mod and go.sum.
vendor_check=$(mktemp -d)
trap 'rm -rf "$vendor_check"' EXIT
go mod vendor -o "$vendor_check/vendor"
if ! diff -r vendor "$vendor_check/vendor" >&2; then
  echo "vendor/ is stale: run 'go mod vendor' and commit the result" >&2
  exit 1
fi

echo "== gofmt, go vet" >&2
unformatted=$(gofmt -l $(git ls-files '*.go' ':!vendor'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi
# Both builds: the unit tests alone, and with the harness's tests.
go vet ./...
go vet -tags harness ./...

echo "== nix-instantiate --parse" >&2
for f in $(git ls-files '*.nix'); do
  nix-instantiate --parse "$f" >/dev/null
done

echo "== go test without the harness, as an unprivileged user" >&2
# As the package's build runs them (nixos/package.nix: go test ./..., in
# Nix's sandbox as a build user): a test that needs root belongs behind the
# harness tag. In a copy of the tree the user can read, with caches of its
# own.
unprivileged=$(mktemp -d)
trap 'rm -rf "$vendor_check" "$unprivileged"' EXIT
git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$unprivileged"
mkdir "$unprivileged/home"
chown -R nobody "$unprivileged"
chmod 0755 "$unprivileged"
(cd "$unprivileged" && setpriv --reuid=nobody --regid=nogroup --clear-groups \
  env -i PATH="$PATH" HOME="$unprivileged/home" GOCACHE="$unprivileged/home/cache" \
  GOPATH="$unprivileged/home/go" GOFLAGS=-mod=vendor GOTOOLCHAIN=local \
  go test -count=1 ./...)

echo "== go test, the harness's tests included" >&2
# -tags harness adds the tests that need root, the real nix-daemon and sshd
# (tests/e2e, tests/integration, the CLI's scripts in testdata/harness); a
# missing piece fails them, never skips them.
go test -race -count=1 -timeout 30m -tags harness ./...
