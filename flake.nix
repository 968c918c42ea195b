{
  description = "nixcache: a private Nix binary cache served over SSH";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs =
    { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;
      linux = [
        "x86_64-linux"
        "aarch64-linux"
      ];
      systems = linux ++ [
        "x86_64-darwin"
        "aarch64-darwin"
      ];
      forSystems = systems: f: lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forSystems systems (pkgs: {
        nixcache = pkgs.callPackage ./nixos/package.nix { rev = self.shortRev or self.dirtyShortRev or null; };
        default = self.packages.${pkgs.stdenv.hostPlatform.system}.nixcache;
      });

      apps = forSystems systems (pkgs: {
        default = {
          type = "app";
          program = lib.getExe self.packages.${pkgs.stdenv.hostPlatform.system}.nixcache;
          meta.description = "nixcache, the CLI";
        };
      });

      # Paths, not functions of this flake's pkgs: the modules use the pkgs of
      # the system that imports them. Nothing is enabled by default.
      nixosModules = {
        server = ./nixos/server.nix;
        client = ./nixos/client.nix;
        default = ./nixos/default.nix;
      };

      checks = forSystems systems (
        pkgs:
        {
          # Builds the package and runs its unit tests.
          nixcache = self.packages.${pkgs.stdenv.hostPlatform.system}.nixcache;

          # tests/nixos/eval.nix throws at evaluation if any case fails.
          module-eval = pkgs.runCommand "nixcache-module-eval" {
            passed = lib.concatStringsSep "\n" (import ./tests/nixos/eval.nix { inherit lib; });
          } ''printf '%s\n' "$passed" > $out'';
        }
        // lib.optionalAttrs pkgs.stdenv.hostPlatform.isLinux {
          vm-cache = pkgs.testers.runNixOSTest (
            import ./tests/nixos/vm-cache.nix {
              inherit pkgs;
              nixcacheModule = self.nixosModules.default;
            }
          );
        }
      );

      devShells = forSystems systems (pkgs: {
        default = pkgs.mkShell {
          packages = [
            pkgs.go
            pkgs.nix
            pkgs.openssh
          ];
        };
      });

      formatter = forSystems systems (pkgs: pkgs.nixfmt);
    };
}
