{
  description = "nixcache: a private Nix binary cache served over SSH";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  # The package (buildGoModule with a committed vendor/), the NixOS modules
  # (nixos/) and the VM tests in `checks` come with the flake issue; this
  # first cut gives contributors the toolchain the tests need.
  outputs =
    { nixpkgs, ... }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      devShells = forAllSystems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.go
            pkgs.nix
            pkgs.openssh
          ];
        };
      });

      formatter = forAllSystems (pkgs: pkgs.nixfmt);
    };
}
