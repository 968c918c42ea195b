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
  published = specialisation "published";
  push = vmNode "client" [ nodes.client.specialisation.push.configuration ];
  names = config: map (l: lib.last (lib.splitString " " l)) config.users.users.nix-ssh.openssh.authorizedKeys.keys;
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

  "vm test: the revoked server has build-02 and the push client, not client" =
    expect.accepted revoked
    ++ expect.eq "clients" (names revoked) [
      "nixcache:build-02"
      "nixcache:pusher"
    ];

  "vm test: the server registers the client's second key with the role push, its first with pull" =
    let
      keys = nodes.server.users.users.nix-ssh.openssh.authorizedKeys.keys;
      blob = file: lib.elemAt (lib.splitString " " (lib.fileContents file)) 1;
      lineOf = file: lib.findFirst (lib.hasInfix (blob file)) "" keys;
    in
    expect.eq "clients" (names nodes.server) [
      "nixcache:build-02"
      "nixcache:client"
      "nixcache:pusher"
    ]
    ++ expect.true "push" (lib.hasInfix " --client pusher --role push\" " (lineOf ./test-keys/pusher_ed25519.pub))
    ++ expect.true "pull" (
      lib.hasInfix " --client client\" " (lineOf ./test-keys/client_ed25519.pub)
      && !lib.hasInfix "--role" (lineOf ./test-keys/client_ed25519.pub)
    );

  "vm test: the published server serves the channel alone, the closures of its roots" =
    expect.accepted published
    ++ expect.true "ForceCommand" (
      lib.hasInfix " --publish-mode published " published.services.openssh.extraConfig
    )
    ++ expect.true "the base server serves everything" (
      lib.hasInfix " --publish-mode all " nodes.server.services.openssh.extraConfig
    );

  "vm test: the client's push specialisation logs in with the push key through the substituter" =
    expect.accepted push
    ++ expect.eq "the key" push.systemd.services.nixcache-substituter.serviceConfig.LoadCredential [
      "ssh-key:/var/lib/nixcache/client/push_ed25519"
    ]
    ++ expect.true "installed by the test" (
      lib.hasInfix "/var/lib/nixcache/client/push_ed25519" nodes.client.system.activationScripts.nixcacheTestKey
    );

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
