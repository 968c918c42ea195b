#!/usr/bin/env bash
# Installs what nixcache's tests and quick start need on Debian or Ubuntu,
# as root: Nix (with its build users), OpenSSH, a C compiler (cgo, which
# `go test -race` needs), and the Go modules. Idempotent: installs only what
# is missing.
set -euo pipefail

if ! command -v go >/dev/null; then
  echo "deps: Go is not installed: nixcache needs Go 1.26 or later (https://go.dev/dl/)" >&2
  exit 1
fi

need=()
command -v nix-daemon >/dev/null || need+=(nix-bin)
getent group nixbld >/dev/null || need+=(nix-setup-systemd)
command -v sshd >/dev/null || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v ssh-keygen >/dev/null || need+=(openssh-client)
command -v unshare >/dev/null || need+=(util-linux)
# The race detector needs cgo, and cgo the C compiler Go is configured with.
{ command -v "$(go env CC)" >/dev/null && [ -e /usr/include/stdlib.h ]; } || need+=(gcc libc6-dev)
if [ ${#need[@]} -gt 0 ]; then
  echo "deps: installing ${need[*]}" >&2
  apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}"
fi

if ! go list -m >/dev/null 2>&1; then
  echo "deps: 'go list' failed: Go $(go env GOVERSION) is too old for go.mod (Go 1.26 or later)" >&2
  exit 1
fi
go mod download
