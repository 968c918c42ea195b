# What scripts/eval-modules.sh hands to real tools, from the VM test's nodes
# evaluated as in ./eval-vm.nix, in one evaluation: the test's Python script
# (for Python and pyflakes), the server's sshd settings (for sshd -T), the
# client's ssh settings and pinned host key (for ssh -G), and the key units'
# scripts and environments (run by bash on real files, with their key paths
# under /nixcache-eval/, which the runner moves to a directory of its own),
# the clients registry the server's dispatcher reads and its build check,
# the authorized_keys lines, and the client's substituter command (each run
# with the nixcache command).
{ lib }:
let
  inherit (import ./eval-lib.nix { inherit lib; })
    vmTest
    vmNode
    vmNodes
    evalConfig
    ;
  client = vmNodes.client.services.nixcache.client;
  channel = vmNode "client" [ vmNodes.client.specialisation.channel.configuration ];
  registry = vmNodes.server.environment.etc."nixcache/clients.toml".source;
  pin = vmNodes.client.programs.ssh.knownHosts.nixcache;

  keyUnits = evalConfig [
    {
      networking.hostName = "eval";
      services.nixcache.server = {
        enable = true;
        registryFile = ./registry.toml;
        secretKeyFile = "/nixcache-eval/secret-key";
        extraSecretKeyFiles = [ "/nixcache-eval/old-key" ];
      };
      services.nixcache.client = {
        enable = true;
        host = "cache.example.org";
        publicKey = lib.fileContents ./test-keys/signing-2.public;
        hostKey = lib.fileContents ./test-keys/host_ed25519.pub;
        sshKeyFile = "/nixcache-eval/ssh_ed25519";
      };
    }
  ];
  unit = name: keyUnits.systemd.services.${name};
in
{
  testScript = vmTest.testScript { nodes = vmNodes; };
  sshd = ''
    MaxStartups ${vmNodes.server.services.openssh.settings.MaxStartups}
    ${vmNodes.server.services.openssh.extraConfig}
  '';
  # What `nixcache serve` reads, how the build checks it, and the
  # authorized_keys lines that name each client to it.
  registry = registry.text;
  registryCheck = registry.checkPhase;
  authorizedKeys = lib.concatLines vmNodes.server.users.users.nix-ssh.openssh.authorizedKeys.keys;
  substituterCommand = channel.systemd.services.nixcache-substituter.serviceConfig.ExecStart;
  ssh = vmNodes.client.programs.ssh.extraConfig;
  knownHosts = "${lib.concatStringsSep "," pin.hostNames} ${pin.publicKey}\n";
  inherit (client) host user;
  keygenScript = (unit "nixcache-keygen").script;
  keygenEnv = builtins.toJSON (unit "nixcache-keygen").environment;
  clientKeyScript = (unit "nixcache-client-key").script;
  clientKeyEnv = builtins.toJSON (unit "nixcache-client-key").environment;
}
