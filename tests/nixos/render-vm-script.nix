# The VM test's Python script, rendered against the nodes evaluated as in
# ./eval-vm.nix; scripts/eval-modules.sh compiles it with Python to catch
# syntax errors before `nix flake check` would.
{ lib }:
let
  t = import ./eval-lib.nix { inherit lib; };
in
t.vmTest.testScript { nodes = t.vmNodes; }
