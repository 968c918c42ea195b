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
passed=$(nix-instantiate --eval --strict --json tests/nixos/eval.nix --arg lib "import $lib/lib")
# ["case one","case two"] -> one case per line
echo "$passed" | sed 's/^\["//; s/"\]$//; s/","/\n/g' | sed 's/^/passed: /'

# The VM test's script, rendered against the evaluated nodes, must at
# least be valid Python; running it needs `nix flake check` on a real machine.
nix-instantiate --eval --strict --json tests/nixos/render-vm-script.nix --arg lib "import $lib/lib" |
  python3 -c 'import json, sys; compile(json.load(sys.stdin), "vm-cache testScript", "exec")'
echo "passed: vm test: the rendered script compiles as Python"
