# Module-evaluation tests: nixos/server.nix and nixos/client.nix evaluated
# with lib.evalModules next to a mirror of the nixpkgs options they set
# (./nixpkgs-options.nix, ./nixpkgs-defaults.nix), no NixOS and no package
# set. Each case is a list of failures; evaluating this file throws with
# all of them, or returns the names of the cases that passed.
#
#   nix-instantiate --eval --strict tests/nixos/eval.nix --arg lib 'import /path/to/nixpkgs/lib'
#
# The flake runs it in `checks` with the pinned nixpkgs' lib;
# scripts/eval-modules.sh runs it with a fetched nixpkgs.lib.
{ lib }:
let
  args = import ./eval-lib.nix { inherit lib; };
  cases =
    import ./eval-server.nix args
    // import ./eval-client.nix args
    // import ./eval-vm.nix args
    // import ./eval-flake.nix args;

  failures = lib.concatLists (
    lib.mapAttrsToList (name: fs: map (f: "${name}: ${f}") fs) (builtins.deepSeq cases cases)
  );
in
if failures == [ ] then
  lib.attrNames cases
else
  throw "module evaluation tests failed:\n${lib.concatStringsSep "\n" failures}"
