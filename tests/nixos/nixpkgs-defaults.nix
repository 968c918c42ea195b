# The top-level config that nixpkgs itself sets on the options mirrored in
# ./nixpkgs-options.nix, at the same priorities as upstream (nixos-26.05 /
# master). Evaluate it together with that file.
{ config, lib, ... }:

let
  cfg = config.nix;
  sshd = config.services.openssh;

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
    # system-features is mkDefault (the option has no default): any plain
    # definition elsewhere replaces this list instead of adding to it. Left
    # out: the gccarch-* entries, which depend on
    # pkgs.stdenv.hostPlatform.gcc.arch (unset on x86_64-linux and
    # aarch64-linux).
    (lib.mkIf cfg.enable {
      nix.settings = {
        substituters = lib.mkAfter [ "https://cache.nixos.org/" ];
        system-features = lib.mkDefault [
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

    # nixos/modules/programs/bash/bash.nix, unconditionally (its `enable`
    # option was removed).
    { users.defaultUserShell = lib.mkDefault bashInteractiveStandIn; }

    # nixos/modules/services/networking/ssh/sshd.nix, under
    # `mkIf cfg.enable`: openFirewall (default true) opens every port sshd
    # listens on. Not the ports of listenAddresses entries with their own
    # port, upstream neither.
    (lib.mkIf sshd.enable {
      networking.firewall.allowedTCPPorts = lib.optionals sshd.openFirewall sshd.ports;
    })
  ];
}
