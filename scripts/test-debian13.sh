#!/usr/bin/env bash
# Runs the whole suite (scripts/test.sh) once more inside a Debian 13 chroot,
# whose nix-bin is Nix 2.26 and whose sshd is OpenSSH 10: a Nix past 2.17
# (untrusted signing) and an sshd with per-source penalties, next to the
# host's Debian 12 (Nix 2.8, OpenSSH 9.2). As root; needs debootstrap and
# Debian's mirror. The chroot is made in a temporary directory and removed,
# mounts first, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}

if ! command -v debootstrap >/dev/null; then
  echo "debian13: installing debootstrap" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
fi
goroot=$(go env GOROOT)

root=$(mktemp -d /tmp/nixcache-debian13-XXXXXX)
# It becomes the chroot's /, which Nix's build users must be able to enter.
chmod 0755 "$root"
cleanup() {
  # Unmount everything below the chroot, then make sure nothing is left
  # mounted before deleting: rm must never reach the host's /dev or /proc.
  umount -R "$root" 2>/dev/null || umount -R -l "$root" 2>/dev/null || true
  if findmnt -R -n -o TARGET "$root" >/dev/null 2>&1; then
    echo "debian13: mounts left under $root; not removing it" >&2
    return
  fi
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT

echo "== debian13: debootstrap trixie into $root" >&2
debootstrap --variant=minbase trixie "$root" "$mirror" >"$root.debootstrap.log" 2>&1 ||
  { cat "$root.debootstrap.log" >&2; rm -f "$root.debootstrap.log"; exit 1; }
rm -f "$root.debootstrap.log"

# The chroot's / must be a mount point for the harness's `unshare --mount
# --propagation private`.
mount --bind "$root" "$root"
mount --make-private "$root"
for m in proc sys dev dev/pts; do
  mount --bind "/$m" "$root/$m"
done
mkdir -p "$root/usr/local/go" "$root/src"
mount --bind -o ro "$goroot" "$root/usr/local/go"
# The host's CA bundle: the Go module proxy may sit behind its own CA.
cp /etc/resolv.conf "$root/etc/resolv.conf"
cp /etc/ssl/certs/ca-certificates.crt "$root/ca-certificates.crt"
git clone -q "$repo" "$root/src/nixcache"

echo "== debian13: the suite on $(chroot "$root" sh -c 'echo Debian $(cat /etc/debian_version)')" >&2
chroot "$root" /usr/bin/env -i HOME=/root \
  PATH=/usr/local/go/bin:/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin \
  SSL_CERT_FILE=/ca-certificates.crt GOFLAGS=-buildvcs=false \
  /bin/bash -c '
    set -euo pipefail
    # What a Debian 12 host already has (git, and cgo for -race); deps.sh
    # installs Nix and OpenSSH.
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends git gcc libc6-dev >/dev/null
    cd /src/nixcache
    scripts/deps.sh
    echo "debian13: $(nix --version), $(ssh -V 2>&1)" >&2
    scripts/test.sh
  '
