#!/usr/bin/env bash
# Runs the module-evaluation tests (tests/nixos/eval.nix) with a nixpkgs
# lib directory: the `lib` of a nixpkgs checkout or of nix-community/nixpkgs.lib.
# `nix flake check` runs the same tests with the pinned nixpkgs' lib. Then
# it hands what the modules write to the real tools that read it: Python
# and pyflakes, sshd and ssh, bash with the nixcache command (built with
# go) and ssh-keygen for the key units' scripts, and that nixcache for the
# server's registry and dispatcher and the client's substituter command.
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
forced=$(sed -n 's/^forcecommand //p' <<<"$for_cache")
nix=/nix/store/00000000000000000000000000000000-nix-2.34.6/bin
for want in "forcecommand /nix/store/00000000000000000000000000000000-nixcache-0.1.0/bin/nixcache serve --registry /etc/nixcache/clients.toml --nix-store $nix/nix-store --nix-daemon $nix/nix-daemon --publisher /run/nixcache/publisher.sock --publish-mode all --roots /nix/var/nix/gcroots/nixcache" \
  "exposeauthinfo yes" "permittty no" "allowtcpforwarding no" "allowagentforwarding no" "x11forwarding no" \
  "permittunnel no" "permituserrc no" "authenticationmethods publickey" "maxsessions 10" "maxstartups 64:30:256"; do
  grep -qx "$want" <<<"$for_cache" || { echo "sshd -T for nix-ssh lacks '$want'" >&2; exit 1; }
done
if ! grep -qx "forcecommand none" <<<"$for_others"; then
  echo "sshd forces the serve command on other users too" >&2
  exit 1
fi
if ! grep -qx "exposeauthinfo no" <<<"$for_others"; then
  echo "sshd exposes authentication details to other users' sessions too" >&2
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

# The key units' scripts, run by bash -e as systemd runs a NixOS unit's
# script, on real files: a key that another user owns, or that anyone but
# its owner may read or change, stops the unit with a message that says
# what to do and quotes nothing of the key, and nothing is published.
keys="$tmp/keys" bin="$tmp/bin"
mkdir -p "$keys" "$bin"
go build -o "$bin/nixcache" ./cmd/nixcache
# unit NAME VAR=VALUE...: NAME's script, with its environment and the
# overrides, key paths moved from /nixcache-eval/ to $keys.
unit() {
  local name=$1 envs
  shift
  sed "s|/nixcache-eval/|$keys/|g" "$tmp/${name}Script" > "$tmp/$name.sh"
  mapfile -t envs < <(python3 -c 'import json, sys
for k, v in json.load(open(sys.argv[1])).items():
    print(k + "=" + v.replace("/nixcache-eval/", sys.argv[2] + "/"))' "$tmp/${name}Env" "$keys")
  env -i PATH="$bin:$PATH" "${envs[@]}" "$@" bash -e "$tmp/$name.sh" > "$tmp/$name.out" 2> "$tmp/$name.err"
}
# refused WHAT NAME 'WANT...' VAR=VALUE...: the unit fails, its message
# has every WANT (one per line), and quotes no line of a key in $keys.
refused() {
  local what=$1 name=$2 wants=$3 f want
  shift 3
  if unit "$name" "$@"; then
    echo "$what: $name succeeded; it should have refused" >&2
    exit 1
  fi
  while IFS= read -r want; do
    grep -qF -- "$want" "$tmp/$name.err" ||
      { echo "$what: $name's message lacks '$want':" >&2; cat "$tmp/$name.err" >&2; exit 1; }
  done <<<"$wants"
  for f in "$keys"/*; do
    if grep -qxFf "$f" "$tmp/$name.err" "$tmp/$name.out"; then
      echo "$what: $name printed a line of $f" >&2
      exit 1
    fi
  done
}
accepted() {
  local what=$1 name=$2
  shift 2
  unit "$name" "$@" || { echo "$what: $name failed:" >&2; cat "$tmp/$name.err" >&2; exit 1; }
}

server=(SECRET="$keys/secret-key" PUBLIC="$keys/public-key")
"$bin/nixcache" keygen --name old-1 --secret-key-file "$keys/old-key" > /dev/null
accepted "a fresh server" keygen "${server[@]}"
[ "$(stat -c %a "$keys/secret-key")" = 600 ] || { echo "the new secret key is not mode 600" >&2; exit 1; }
grep -qx "eval-1:.*" "$keys/public-key" || { echo "no public key published" >&2; exit 1; }
rm "$keys/public-key"
chmod 0644 "$keys/secret-key"
refused "a world-readable secret key" keygen "services.nixcache.server.secretKeyFile
$keys/secret-key has mode 0644
chmod 0600" "${server[@]}"
[ ! -e "$keys/public-key" ] || { echo "a world-readable key was published from" >&2; exit 1; }
chmod 0600 "$keys/secret-key"
chmod 0640 "$keys/old-key"
refused "a group-readable extra key" keygen "services.nixcache.server.extraSecretKeyFiles
$keys/old-key has mode 0640" "${server[@]}"
chmod 0600 "$keys/old-key"
accepted "the keys made private again" keygen "${server[@]}"

client=(KEY="$keys/ssh_ed25519" PUBLIC="$keys/ssh-key.pub")
accepted "a fresh client" clientKey "${client[@]}"
[ "$(stat -c %a "$keys/ssh_ed25519")" = 600 ] || { echo "the new ssh key is not mode 600" >&2; exit 1; }
chmod 0604 "$keys/ssh_ed25519"
refused "a world-readable ssh key" clientKey "services.nixcache.client.sshKeyFile
$keys/ssh_ed25519 has mode 0604" "${client[@]}"
chmod 0600 "$keys/ssh_ed25519"
accepted "the ssh key made private again" clientKey "${client[@]}"
echo "passed: the key units refuse keys others can read, and publish nothing"

# The client's key unit prints a line for the cache's admin to paste. A key
# installed by hand may carry any comment: the line must not.
rm "$keys/ssh_ed25519" "$keys/ssh_ed25519.pub"
ssh-keygen -q -t ed25519 -N '' -C "x'; touch $tmp/pasted; echo '" -f "$keys/ssh_ed25519"
accepted "a key with a hostile comment" clientKey "${client[@]}"
line=$(sed -n "s/^the cache's admin registers this machine with: //p" "$tmp/clientKey.out")
words=$(cd "$tmp" && sh -c "nixcache() { printf '%s\n' \"\$@\"; }; $line")
want=$(printf '%s\n' clients add eval --key "$(cut -d' ' -f1,2 "$keys/ssh_ed25519.pub") nixcache@eval")
if [ -e "$tmp/pasted" ] || [ "$words" != "$want" ]; then
  echo "the client's line for the admin runs more than nixcache clients add, or other words: $line" >&2
  exit 1
fi
echo "passed: the client's line for the admin is nixcache clients add, whatever the key's comment"

# The registry the server's dispatcher reads, through the check its build
# runs, with the real CLI.
fake_nixcache=/nix/store/00000000000000000000000000000000-nixcache-0.1.0/bin/nixcache
target="$tmp/registry" bash -e -c "$(sed "s|$fake_nixcache|$bin/nixcache|" "$tmp/registryCheck")" ||
  { echo "the build's check refuses the registry the module renders" >&2; exit 1; }
echo "passed: the CLI reads the registry the module renders for the dispatcher, as the build checks"

# The dispatcher as sshd runs it for nix-ssh: the ForceCommand sshd -T
# reported, with ExposeAuthInfo's record of the key that logged in; and as
# an authorized_keys line runs it, without that record. The Nix programs
# are stand-ins that say how they were run.
stubs="$tmp/stubs"
mkdir -p "$stubs"
for p in nix-store nix-daemon; do
  printf '#!/bin/sh\necho "%s $*"\n' "$p" > "$stubs/$p"
  chmod +x "$stubs/$p"
done
# The dispatcher writes every login to the audit log through the publisher:
# a real one, on a socket of this run's.
"$bin/nixcache" keygen --name eval-1 --secret-key-file "$tmp/publisher-key" --public-key-file "$tmp/publisher-key.pub" > /dev/null
"$bin/nixcache" publisher --listen "$tmp/publisher.sock" --registry "$tmp/registry" --secret-key-file "$tmp/publisher-key" \
  --roots "$tmp/roots" --allow-user "$(id -un)" --audit-log "$tmp/audit.log" 2> "$tmp/publisher.err" &
publisher=$!
trap 'kill $publisher 2>/dev/null; rm -rf "$tmp"' EXIT
for _ in $(seq 100); do [ -S "$tmp/publisher.sock" ] && break; sleep 0.1; done
[ -S "$tmp/publisher.sock" ] || { echo "the publisher did not start:" >&2; cat "$tmp/publisher.err" >&2; exit 1; }
# real REGISTRY: a rendered command, run with the nixcache just built, the
# stand-ins, REGISTRY and this run's publisher.
real() {
  sed -e "s|$fake_nixcache|$bin/nixcache|" -e "s|/etc/nixcache/clients.toml|$1|" -e "s|$nix/|$stubs/|g" \
    -e "s|/run/nixcache/publisher.sock|$tmp/publisher.sock|"
}
# login COMMAND PUB ORIGINAL: COMMAND for a login with the key PUB (none
# if empty) that asked to run ORIGINAL.
login() {
  local auth=()
  if [ -n "$2" ]; then
    printf 'publickey %s\n' "$(cut -d' ' -f1,2 "$2")" > "$tmp/auth"
    auth=(SSH_USER_AUTH="$tmp/auth")
  fi
  env -i PATH="$PATH" SSH_CONNECTION="127.0.0.1 50000 127.0.0.1 22" SSH_ORIGINAL_COMMAND="$3" "${auth[@]}" \
    bash -c "$1" < /dev/null > "$tmp/login.out" 2> "$tmp/login.err"
}
served() {
  login "$@" || { echo "the dispatcher refused '$3' to $2:" >&2; cat "$tmp/login.err" >&2; exit 1; }
}
refused_login() {
  if login "$@" || [ -s "$tmp/login.out" ]; then
    echo "the dispatcher served '$3' to ${2:-a login without ExposeAuthInfo}:" >&2
    cat "$tmp/login.out" "$tmp/login.err" >&2
    exit 1
  fi
}
registered=tests/nixos/test-keys/client_ed25519.pub
ssh-keygen -q -t ed25519 -N '' -f "$tmp/outsider"
dispatch=$(real "$tmp/registry" <<<"$forced")
served "$dispatch" "$registered" "nix-store --serve --write"
[ "$(cat "$tmp/login.out")" = "nix-store --serve" ] ||
  { echo "the dispatcher ran $(cat "$tmp/login.out") for nix-store --serve --write" >&2; exit 1; }
refused_login "$dispatch" "$tmp/outsider.pub" "nix-store --serve"
grep -q "not in the clients registry" "$tmp/login.err" ||
  { echo "an outsider's refusal does not say why:" >&2; cat "$tmp/login.err" >&2; exit 1; }
for asked in "nix-daemon --stdio" "" "id" "sh -c id"; do
  refused_login "$dispatch" "$registered" "$asked"
done
# A rebuild that revokes the key reaches a connection made before it,
# whose ForceCommand is the old one: the registry is read at each login.
refused_login "$(real tests/nixos/registry-revoked.toml <<<"$forced")" "$registered" "nix-store --serve"
# Without sshd's Match block, each authorized_keys line names its client.
line=$(sed -n 's/^restrict,command="\([^"]*\)" .* nixcache:client$/\1/p' "$tmp/authorizedKeys")
served "$(real "$tmp/registry" <<<"$line")" "" "nix-store --serve"
[ "$(cat "$tmp/login.out")" = "nix-store --serve" ] || { echo "the client's line ran $(cat "$tmp/login.out")" >&2; exit 1; }
refused_login "$(real "$tmp/registry" <<<"$line")" "" "nix-daemon --stdio"
refused_login "$(real tests/nixos/registry-revoked.toml <<<"$line")" "" "nix-store --serve"
# Each of those logins is in the audit log: the sessions served, the
# refusals with what was asked, the outsider by its key's fingerprint.
outsider_fp=$(ssh-keygen -lf "$tmp/outsider.pub" | cut -d' ' -f2)
for want in '"client":"client","key":"SHA256:[^"]*","role":"pull","op":"session","request":"nix-store --serve"' \
  "\"key\":\"$outsider_fp\",\"role\":\"\",\"op\":\"refused\",\"request\":\"login\"" \
  '"client":"client","key":"SHA256:[^"]*","role":"pull","op":"refused","request":"shell"'; do
  grep -q -- "$want" "$tmp/audit.log" || { echo "the audit log lacks $want:" >&2; cat "$tmp/audit.log" >&2; exit 1; }
done
echo "passed: the dispatcher serves a registered key nix-store --serve, read-only, and nothing else, and an outsider nothing; the audit log has each login"

# The client's substituter command, with the nixcache just built: every
# flag the module passes is one the CLI takes (a usage error exits 2). It
# reaches a closed loopback port instead of the VM's server.
ssh-keygen -q -t ed25519 -N '' -f "$keys/substituter_key"
mkdir -p "$tmp/cache"
sub=$(sed -e "s|$fake_nixcache|$bin/nixcache|" -e "s|%d/ssh-key|$keys/substituter_key|" \
  -e "s|--known-hosts-file [^ ]*|--known-hosts-file $tmp/knownHosts|" -e "s|%C/|$tmp/cache/|" \
  -e "s|--cache ssh://\([^@]*\)@[^ ]*|--cache ssh://\1@127.0.0.1:1|" -e "s|--listen [^ ]*|--listen 127.0.0.1:0|" \
  "$tmp/substituterCommand")
rc=0
timeout 10 bash -c "$sub" < /dev/null > "$tmp/substituter.out" 2> "$tmp/substituter.err" || rc=$?
if [ "$rc" = 2 ] || grep -qi "usage" "$tmp/substituter.err"; then
  echo "the CLI refuses the substituter command the module writes: $sub" >&2
  cat "$tmp/substituter.err" >&2
  exit 1
fi
echo "passed: the CLI takes the substituter command the module writes"

# Another owner needs root to make.
if [ "$(id -u)" = 0 ]; then
  chown 65534 "$keys/secret-key" "$keys/ssh_ed25519"
  refused "a secret key owned by another user" keygen "$keys/secret-key is owned by uid 65534" "${server[@]}"
  refused "an ssh key owned by another user" clientKey "$keys/ssh_ed25519 is owned by uid 65534" "${client[@]}"
  echo "passed: the key units refuse keys another user owns"
else
  echo "not run: the key units and keys another user owns (needs root)"
fi
