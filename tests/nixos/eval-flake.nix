# The flake's outputs, evaluated with a stand-in nixpkgs whose
# buildGoModule, runCommand and runNixOSTest return their arguments (see
# ./eval.nix): which outputs exist for which systems, and what the package
# is built from and with.
{
  lib,
  expect,
  fake,
  ...
}:
let
  systems = [
    "x86_64-linux"
    "aarch64-linux"
    "x86_64-darwin"
    "aarch64-darwin"
  ];
  # buildGoModule (finalAttrs: { ... }) as a fixed point, returning its attributes.
  buildGoModule =
    f:
    let
      final = f final // fake "${final.pname}-${final.version}" { };
    in
    final;
  pkgsFor = system: {
    inherit lib;
    stdenv.hostPlatform = {
      inherit system;
      isLinux = lib.hasSuffix "-linux" system;
    };
    callPackage =
      path: args:
      import path (
        {
          inherit lib buildGoModule;
          nix = fake "nix" { };
          openssh = fake "openssh" { };
        }
        // args
      );
    runCommand = name: env: script: fake name { inherit env script; };
    testers.runNixOSTest = test: fake "vm-test" { inherit test; };
    mkShell = fake "shell";
    go = fake "go" { };
    nix = fake "nix" { };
    openssh = fake "openssh" { };
    nixfmt = fake "nixfmt" { };
  };
  outputs = (import ../../flake.nix).outputs {
    self = outputs // {
      shortRev = "0123abc";
    };
    nixpkgs = {
      inherit lib;
      legacyPackages = lib.genAttrs systems pkgsFor;
    };
  };
  package = outputs.packages.x86_64-linux.nixcache;
  # lib.fileset needs builtins.readFileType (Nix 2.14): under `nix flake
  # check` it is there; Nix 2.8, on which scripts/eval-modules.sh ran here,
  # lacks it, and the case's name says so.
  canListSource = builtins ? readFileType;
  src = builtins.attrNames (builtins.readDir package.src);
in
{
  ${
    if canListSource then
      "flake: the package is built from go.mod, go.sum, vendor/, cmd/ and internal/ alone"
    else
      "flake: (not checked by this Nix, older than 2.14: the package's source listing)"
  } =
    lib.optionals canListSource (
      expect.eq "source" src [
        "cmd"
        "go.mod"
        "go.sum"
        "internal"
        "vendor"
      ]
    );

  "flake: the package for every system, built offline from vendor/" =
    expect.eq "systems" (lib.attrNames outputs.packages) (lib.sort (a: b: a < b) systems)
    ++ expect.true "nixcache and default everywhere" (
      lib.all (s: outputs.packages.${s}.default == outputs.packages.${s}.nixcache) systems
    )
    ++ expect.eq "vendorHash" package.vendorHash null
    ++ expect.eq "subPackages" package.subPackages [ "cmd/nixcache" ]
    ++ expect.true "version from the flake's revision, through ldflags" (
      package.version == "0.1.0+0123abc" && lib.elem "-X main.version=0.1.0+0123abc" package.ldflags
    )
    ++ expect.true "unit tests run" (lib.hasInfix "go test" package.checkPhase && package.doCheck or true);

  "flake: the package's meta is complete" =
    expect.eq "meta attributes" (lib.attrNames package.meta) [
      "description"
      "homepage"
      "license"
      "longDescription"
      "mainProgram"
      "maintainers"
      "platforms"
    ]
    ++ expect.true "platforms" (
      lib.all (s: lib.elem s package.meta.platforms) systems
    );

  "flake: modules are files, nothing captured" = expect.eq "nixosModules" outputs.nixosModules {
    server = ../../nixos/server.nix;
    client = ../../nixos/client.nix;
    default = ../../nixos/default.nix;
  };

  "flake: checks, with the VM test on Linux only" =
    expect.eq "linux checks" (lib.attrNames outputs.checks.x86_64-linux) [
      "module-eval"
      "nixcache"
      "vm-cache"
    ]
    ++ expect.eq "darwin checks" (lib.attrNames outputs.checks.aarch64-darwin) [
      "module-eval"
      "nixcache"
    ]
    ++ expect.eq "VM test nodes" (lib.attrNames outputs.checks.aarch64-linux.vm-cache.test.nodes) [
      "client"
      "outsider"
      "server"
    ];

  "flake: app, dev shell and formatter" =
    expect.eq "app" outputs.apps.x86_64-linux.default.program "${package}/bin/nixcache"
    ++ expect.eq "dev shell" (map (p: p.name) outputs.devShells.x86_64-darwin.default.packages) [
      "go"
      "nix"
      "openssh"
    ]
    ++ expect.eq "formatter" outputs.formatter.x86_64-linux.name "nixfmt";
}
