#!/usr/bin/env bash
# Runs commands as a newcomer would: in a freshly debootstrapped minimal
# Debian root, with what a stock cloud image or a debian container has and
# no compiler, inside private mount and PID namespaces as in a container,
# with a fresh clone of this repository's HEAD (committed files only).
#
#   scripts/fresh-root.sh SUITE CMD...      e.g. bookworm 'scripts/test.sh'
#
# Each CMD runs as root with `bash -lc CMD` in the clone (/root/project),
# Go from the host's GOROOT on PATH (read-only at /usr/local/go); the
# commands of one run share the root, so a later one sees what an earlier
# one installed. ../shared beside the repository, if there is one, is at
# /root/shared (read-only), so `../shared/...` means the same inside. The
# root is made under /var/tmp and removed afterwards whatever happens: its
# mounts live only in the private namespace, whose processes all die with
# it. As root; installs debootstrap if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# What a stock Debian cloud image or container has beyond minbase: TLS roots,
# git, curl, sudo, xz-utils, procps. No compiler, no systemd.
packages=ca-certificates,git,curl,sudo,xz-utils,procps

inner() { # PID 1 of the new namespaces: prepare the root, run the commands
  local root=$1
  shift
  # As PID 1 of its own PID namespace, kill -1 reaches every process left
  # in it (daemons the commands started) and nothing outside.
  [ $$ = 1 ] || { echo "fresh-root: not PID 1 of a new PID namespace" >&2; exit 1; }
  trap 'kill -KILL -1 2>/dev/null || true' EXIT
  mount -t proc -o nosuid,nodev,noexec proc "$root/proc"
  mount -t sysfs -o ro,nosuid,nodev,noexec sysfs "$root/sys"
  mount --bind /dev "$root/dev"
  mount --bind /dev/pts "$root/dev/pts"
  mount -t tmpfs -o nosuid,nodev,mode=1777 shm "$root/dev/shm"
  mount -t tmpfs -o nosuid,nodev,mode=755 run "$root/run"
  mkdir -p "$root/run/lock" "$root/usr/local/go"
  mount --bind -o ro "$(go env GOROOT)" "$root/usr/local/go"
  if [ -d ../shared ]; then
    mkdir -p "$root/root/shared"
    mount --bind -o ro ../shared "$root/root/shared"
  fi
  local i=0 cmd rc
  for cmd in "$@"; do
    i=$((i + 1))
    printf '\n== fresh %s root [%d/%d] $ %s\n' "$suite" "$i" "$#" "$cmd" >&2
    SECONDS=0
    rc=0
    chroot "$root" /usr/bin/env -i HOME=/root USER=root LOGNAME=root SHELL=/bin/bash LANG=C.UTF-8 \
      TERM="${TERM:-dumb}" /bin/bash -c 'cd /root/project && exec bash -lc "$1"' bash "$cmd" </dev/null || rc=$?
    printf '== fresh %s root [%d/%d] exit %d after %ds\n' "$suite" "$i" "$#" "$rc" "$SECONDS" >&2
    [ "$rc" = 0 ] || return "$rc"
  done
}

if [ "${1:-}" = __inner ]; then
  shift
  suite=$1
  shift
  inner "$@"
  exit
fi

if [ $# -lt 2 ]; then
  echo "usage: scripts/fresh-root.sh SUITE CMD..." >&2
  exit 2
fi
suite=$1
shift
if ! command -v debootstrap >/dev/null; then
  echo "fresh-root: installing debootstrap" >&2
  apt-get update -q >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null
fi
# The mirror this machine's apt uses.
mirror=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
mirror=${mirror:-http://deb.debian.org/debian}

work=$(mktemp -d /var/tmp/nixcache-fresh-root-XXXXXX)
root=$work/root
cleanup() {
  # The namespace's mounts died with it; never let rm cross into a mount.
  if findmnt -rn -o TARGET | grep -q "^$work"; then
    echo "fresh-root: mounts left under $work; not removing it" >&2
    return 1
  fi
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

echo "== fresh $suite root: debootstrap --variant=minbase ($packages) from $mirror" >&2
mkdir "$root"
# It becomes /, which Nix's build users must be able to enter.
chmod 0755 "$root"
if ! unshare --mount --propagation private -- debootstrap --variant=minbase --include="$packages" \
  --components=main "$suite" "$root" "$mirror" >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  exit 1
fi
# As a fresh machine has it: no package lists (the newcomer runs apt-get
# update), nothing from the host but DNS, and the host's extra CA
# certificates (a TLS-intercepting proxy on the way out needs them; a real
# fresh machine would not).
rm -rf "$root/var/lib/apt/lists/"*
cp -L /etc/resolv.conf "$root/etc/resolv.conf"
for crt in /usr/local/share/ca-certificates/*.crt; do
  [ -f "$crt" ] && install -D -m 644 "$crt" "$root$crt"
done
chroot "$root" update-ca-certificates >/dev/null 2>&1
# No init system here: package installs must not start services, as in a
# container; the project's scripts start what they need.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 755 "$root/usr/sbin/policy-rc.d"
printf 'case ":$PATH:" in *:/usr/local/go/bin:*) ;; *) PATH=$PATH:/usr/local/go/bin ;; esac\nexport PATH\n' \
  >"$root/etc/profile.d/go.sh"
git clone -q --no-hardlinks "$(pwd)" "$root/root/project"

unshare --mount --propagation private --pid --fork --kill-child -- "$BASH" "$(pwd)/scripts/fresh-root.sh" __inner "$suite" "$root" "$@"
