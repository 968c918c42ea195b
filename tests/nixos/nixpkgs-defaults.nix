# The top-level config that nixpkgs itself sets on the options mirrored in
# ./nixpkgs-options.nix, at the same priorities as upstream (nixos-26.05 /
# master). Evaluate it together with that file.
{ config, lib, ... }:

let
  cfg = config.nix;

  # nixos/modules/services/system/nix-daemon.nix: isNixAtLeast
  isNixAtLeast = lib.versionAtLeast (lib.getVersion (cfg.package.out or cfg.package));

  # Stand-in for pkgs.bashInteractive (see fakeDrv in ./nixpkgs-options.nix).
  bashInteractiveStandIn = {
    type = "derivation";
    name = "bash-interactive-5.3p3";
    pname = "bash-interactive";
    version = "5.3p3";
    outPath = "/nix/store/00000000000000000000000000000000-bash-interactive-5.3p3";
    shellPath = "/bin/bash";
  };
in
{
  config = lib.mkMerge [
    # nixos/modules/config/nix.nix, `config = mkIf cfg.enable { ... }`.
    # Normal priority except substituters, which is mkAfter: a plain
    # `nix.settings.substituters = [ ... ]` elsewhere is concatenated in front
    # of cache.nixos.org, not replacing it. trusted-public-keys and
    # trusted-users concatenate too (mkForce to drop the upstream entries).
    # system-features is also the option default; this definition at normal
    # priority is what is used, and extra definitions add to it.
    (lib.mkIf cfg.enable {
      nix.settings = {
        substituters = lib.mkAfter [ "https://cache.nixos.org/" ];
        system-features = [
          "nixos-test"
          "benchmark"
          "big-parallel"
          "kvm"
        ];
        trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
        trusted-users = [ "root" ];
      };
    })

    # nixos/modules/services/system/nix-daemon.nix, "Legacy configuration
    # conversion", also under `mkIf cfg.enable`.
    (lib.mkIf cfg.enable {
      nix.settings = lib.mkMerge [
        (lib.mkIf (isNixAtLeast "2.3pre") { sandbox-fallback = false; })
      ];
    })

    # nixos/modules/programs/bash/bash.nix
    # unconfirmed: read from memory, not from a stored copy of bash.nix.
    { users.defaultUserShell = lib.mkDefault bashInteractiveStandIn; }
  ];
}
