# The VM test's nodes (./vm-cache.nix), evaluated like the modules (see
# ./eval.nix): every node and specialisation passes the modules'
# assertions, and the test script renders against them. The script itself
# runs only under `nix flake check`.
{
  lib,
  expect,
  vmTest,
  vmNode,
  vmNodes,
  ...
}:
let
  nodes = vmNodes;
  specialisation = name: vmNode "server" [ nodes.server.specialisation.${name}.configuration ];
  rotated = specialisation "rotated";
  channel = vmNode "client" [ nodes.client.specialisation.channel.configuration ];
  revoked = specialisation "revoked";
in
{
  "vm test: every node passes the modules' assertions" = lib.concatMap expect.accepted (
    lib.attrValues nodes
  );

  "vm test: the rotated server signs with both keys and expects the committed one" =
    expect.accepted rotated
    ++ expect.eq "secret-key-files" rotated.nix.settings.secret-key-files [
      "/var/lib/nixcache/secret-key-2"
      "/var/lib/nixcache/secret-key"
    ]
    ++ expect.eq "expected key" rotated.services.nixcache.server.publicKey (
      lib.fileContents ./test-keys/signing-2.public
    );

  "vm test: the client's channel specialisation runs the substituter" =
    expect.accepted channel
    ++ expect.eq "substituter" (lib.head channel.nix.settings.substituters) "http://127.0.0.1:37515"
    ++ expect.true "unit" (channel.systemd.services ? nixcache-substituter);

  "vm test: the revoked server has only build-02" =
    expect.accepted revoked
    ++ expect.eq "clients" (map (l: lib.last (lib.splitString " " l))
      revoked.users.users.nix-ssh.openssh.authorizedKeys.keys
    ) [ "nixcache:build-02" ];

  "vm test: the client's key is the registered one" =
    expect.true "registered" (
      lib.hasInfix (lib.elemAt (lib.splitString " " (lib.fileContents ./test-keys/client_ed25519.pub)) 1) (
        lib.concatStringsSep "\n" nodes.server.users.users.nix-ssh.openssh.authorizedKeys.keys
      )
    );

  "vm test: the script renders" = expect.true "a script" (
    lib.hasInfix "start_all()" (vmTest.testScript { inherit nodes; })
  );
}
