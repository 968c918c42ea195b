#!/usr/bin/env bash
# One command, as root on Debian or Ubuntu: installs what is missing, then
# runs a complete private cache on this machine and shows every step.
# Pass --keep to leave it running, --protocol ssh-ng for nix-daemon --stdio.
set -euo pipefail
cd "$(dirname "$0")/.."
# sshd and nix-daemon live in sbin, which a non-login PATH may lack.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
scripts/deps.sh
exec go run ./tests/quickstart "$@"
