# What the module-evaluation tests share: the modules evaluated with
# lib.evalModules next to the nixpkgs option mirror, expectations, and the
# VM test's nodes evaluated the same way.
{ lib }:
let
  storePath = name: "/nix/store/00000000000000000000000000000000-${name}";

  # A stand-in derivation: enough for types.package, getExe and versions.
  fake =
    name: attrs:
    {
      type = "derivation";
      inherit name;
      outPath = storePath name;
    }
    // attrs;
  fakePackage =
    pname: version: attrs:
    fake "${pname}-${version}" ({ inherit pname version; } // attrs);

  # A file written to the store: as in the real store its path depends on
  # its content, so a case can tell which text a module wrote from the path
  # alone (storeText NAME TEXT); the text and other arguments are kept.
  storeText =
    name: text:
    "/nix/store/${builtins.substring 0 32 (builtins.hashString "sha256" text)}-${name}";
  storeFile =
    args:
    {
      type = "derivation";
      inherit (args) name;
      outPath = storeText args.name args.text;
    }
    // args;

  # The only pkgs functions the modules and the VM test call; the package
  # stands in for pkgs.callPackage ../../nixos/package.nix { }.
  pkgs = {
    inherit lib;
    callPackage = _: _: fakePackage "nixcache" "0.1.0" { meta.mainProgram = "nixcache"; };
    coreutils = fakePackage "coreutils" "9.7" { };
    writeText = name: text: storeFile { inherit name text; };
    writeTextFile = storeFile;
  };

  # config and options, for cases that read an option's declaration.
  evalModules =
    modules:
    lib.evalModules {
      modules = [
        ./nixpkgs-options.nix
        ./nixpkgs-defaults.nix
        ../../nixos/default.nix
        { _module.args.pkgs = pkgs; }
      ]
      ++ modules;
    };
  evalConfig = modules: (evalModules modules).config;

  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  expect = {
    eq =
      what: actual: expected:
      lib.optional (actual != expected)
        "${what}: expected ${builtins.toJSON expected}, got ${builtins.toJSON actual}";
    true = what: cond: lib.optional (!cond) what;
    # An assertion fails, and its message contains every one of `parts`.
    refused =
      config: parts:
      let
        failed = failedAssertions config;
      in
      lib.optional (!lib.any (m: lib.all (p: lib.hasInfix p m) parts) failed)
        "expected an assertion failure saying ${builtins.toJSON parts}, got ${builtins.toJSON failed}";
    accepted = config: expect.eq "failed assertions" (failedAssertions config) [ ];
    # Evaluating `value` fails (a type check, conflicting definitions).
    throws = what: value: lib.optional (builtins.tryEval (builtins.deepSeq value value)).success what;
    # A unit that runs as root is confined as far as its work allows: no
    # capabilities, no network or sockets, a read-only system, a system
    # call filter.
    confined =
      unit: serviceConfig:
      lib.concatLists (
        lib.mapAttrsToList (
          key: want: expect.eq "${unit}'s ${key}" (serviceConfig.${key} or null) want
        ) confinedRoot
      );
  };
  confinedRoot = {
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    # Read, not hidden: a key may live under /root.
    ProtectHome = "read-only";
    PrivateTmp = true;
    PrivateDevices = true;
    UMask = "0077";
    PrivateNetwork = true;
    RestrictAddressFamilies = "none";
    IPAddressDeny = "any";
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    RestrictNamespaces = true;
    RestrictRealtime = true;
    RestrictSUIDSGID = true;
    LockPersonality = true;
    MemoryDenyWriteExecute = true;
    SystemCallArchitectures = "native";
    SystemCallFilter = [
      "@system-service"
      "~@privileged @resources"
    ];
  };

  vmTest = import ./vm-cache.nix {
    inherit pkgs;
    nixcacheModule = ../../nixos/default.nix;
  };
  # As the test framework: each node is named after its attribute.
  vmNode =
    name: extra:
    evalConfig (
      [
        vmTest.defaults
        vmTest.nodes.${name}
        { networking.hostName = lib.mkDefault name; }
      ]
      ++ extra
    );
  vmNodes = lib.genAttrs (lib.attrNames vmTest.nodes) (name: vmNode name [ ]);
in
{
  inherit
    lib
    fake
    fakePackage
    storeText
    confinedRoot
    evalModules
    evalConfig
    failedAssertions
    expect
    vmTest
    vmNode
    vmNodes
    ;
}
