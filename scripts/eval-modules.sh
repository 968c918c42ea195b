#!/usr/bin/env bash
# Runs the module-evaluation tests (tests/nixos/eval.nix) with a nixpkgs
# lib directory: the `lib` of a nixpkgs checkout or of nix-community/nixpkgs.lib.
# `nix flake check` runs the same tests with the pinned nixpkgs' lib.
#
#   scripts/eval-modules.sh /path/to/nixpkgs.lib
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -ne 1 ] || [ ! -f "$1/lib/default.nix" ]; then
  echo "usage: scripts/eval-modules.sh NIXPKGS_LIB_DIR (a directory with lib/default.nix)" >&2
  exit 2
fi
lib=$(cd "$1" && pwd)
echo "nixpkgs lib $(cat "$lib/lib/.version" 2>/dev/null || echo '(version unknown)') from $lib" >&2
# --read-write-mode: the flake case reads the package source, which lib.fileset
# adds to the store.
passed=$(nix-instantiate --eval --read-write-mode --strict --json tests/nixos/eval.nix --arg lib "import $lib/lib")
# ["case one","case two"] -> one case per line
echo "$passed" | sed 's/^\["//; s/"\]$//; s/","/\n/g' |
  sed 's/^\(.*(not checked.*\)$/not run: \1/; t; s/^/passed: /'

# The rest hands what the modules write to real tools: tests/nixos/render.nix
# renders it all in one evaluation, one file per field.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
nix-instantiate --eval --strict --json tests/nixos/render.nix --arg lib "import $lib/lib" |
  python3 -c 'import json, os, sys
for name, text in json.load(sys.stdin).items():
    open(os.path.join(sys.argv[1], name), "w").write(text)' "$tmp"

# The VM test's script must at least be valid Python; running it needs
# `nix flake check` on a real machine. The test driver also lints it with
# pyflakes, knowing its machines and helpers; so does this, with the same
# names declared.
script="$tmp/testScript.py"
{
  printf 'from typing import Any\nserver: Any = None\nclient: Any = None\noutsider: Any = None\n'
  printf 'def start_all() -> None: ...\ndef subtest(name: str) -> Any: ...\n'
  cat "$tmp/testScript"
} > "$script"
python3 -c 'import sys; compile(open(sys.argv[1]).read(), "vm-cache testScript", "exec")' "$script"
if ! /usr/bin/python3 -m pyflakes --version >/dev/null 2>&1; then
  echo "pyflakes is missing: apt-get install python3-pyflakes" >&2
  exit 1
fi
/usr/bin/python3 -m pyflakes "$script"
echo "passed: vm test: the rendered script compiles as Python and passes pyflakes"

# The real sshd and ssh read what the modules write, as the VM test's nodes
# have it, and apply it to the cache account and host alone.
ssh-keygen -q -t ed25519 -N '' -f "$tmp/host_key"
{ echo "HostKey $tmp/host_key"; cat "$tmp/sshd"; } > "$tmp/sshd_config"
sshd=$(command -v sshd || echo /usr/sbin/sshd)
# Run as root, sshd -t and -T insist on the privilege separation directory,
# which Debian's sshd.service makes at start (RuntimeDirectory=sshd): a CI
# container or chroot where sshd never ran lacks it. Make it as that unit
# would, empty and root's.
if [ "$(id -u)" = 0 ] && [ ! -d /run/sshd ]; then
  install -d -m 0755 /run/sshd
fi
"$sshd" -t -f "$tmp/sshd_config"
effective() { "$sshd" -T -f "${2:-$tmp/sshd_config}" -C "user=$1,host=client,addr=127.0.0.1"; }
# (grep -q would close the pipe early, which pipefail reports as a failure.)
for_cache=$(effective nix-ssh) for_others=$(effective alice)
for want in "forcecommand /nix/store/00000000000000000000000000000000-nix-2.34.6/bin/nix-store --serve" \
  "permittty no" "allowtcpforwarding no" "allowagentforwarding no" "x11forwarding no" \
  "permittunnel no" "permituserrc no" "authenticationmethods publickey" "maxsessions 10" "maxstartups 64:30:256"; do
  grep -qx "$want" <<<"$for_cache" || { echo "sshd -T for nix-ssh lacks '$want'" >&2; exit 1; }
done
if ! grep -qx "forcecommand none" <<<"$for_others"; then
  echo "sshd forces the serve command on other users too" >&2
  exit 1
fi
# MaxSessions is OpenSSH's 10 inside and outside the block; the server's
# maxSessions = 16, as written for it, must reach nix-ssh alone.
sed 's/^  MaxSessions 10$/  MaxSessions 16/' "$tmp/sshd_config" > "$tmp/sshd_config_16"
if ! grep -qx "maxsessions 16" <<<"$(effective nix-ssh "$tmp/sshd_config_16")" ||
  ! grep -qx "maxsessions 10" <<<"$(effective alice "$tmp/sshd_config_16")"; then
  echo "sshd does not apply the Match block's MaxSessions to nix-ssh alone" >&2
  exit 1
fi
echo "passed: sshd -t accepts the server's sshd settings; -T applies them to nix-ssh alone"

host=$(cat "$tmp/host") user=$(cat "$tmp/user")
{ cat "$tmp/ssh"; printf 'Host *\n  GlobalKnownHostsFile %s\n' "$tmp/knownHosts"; } > "$tmp/ssh_config"
for_cache=$(ssh -T -G -F "$tmp/ssh_config" -l "$user" "$host")
for_others=$(ssh -T -G -F "$tmp/ssh_config" -l root "$host")
for want in "port 22" "identityfile /var/lib/nixcache/client/ssh_ed25519" "identitiesonly yes" \
  "userknownhostsfile /dev/null" "globalknownhostsfile $tmp/knownHosts" "stricthostkeychecking true" \
  "updatehostkeys false" "checkhostip no" "batchmode yes" "connecttimeout 5" \
  "serveraliveinterval 5" "serveralivecountmax 3" "controlmaster false"; do
  grep -qx "$want" <<<"$for_cache" ||
    { echo "ssh -G for $user@$host lacks '$want'" >&2; exit 1; }
done
if grep -qx "batchmode yes" <<<"$for_others"; then
  echo "the client's ssh settings apply to root@$host too" >&2
  exit 1
fi
pinned=$(ssh-keygen -F "$host" -f "$tmp/knownHosts")
grep -q "ssh-ed25519" <<<"$pinned" ||
  { echo "ssh-keygen -F finds no pinned key for $host" >&2; exit 1; }
echo "passed: ssh -G applies the client's ssh settings to $user@$host alone, and the pin is found"
