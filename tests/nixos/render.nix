# What scripts/eval-modules.sh hands to real tools, from the VM test's nodes
# evaluated as in ./eval-vm.nix, in one evaluation: the test's Python script
# (for Python and pyflakes), the server's sshd settings (for sshd -T) and the
# client's ssh settings and pinned host key (for ssh -G).
{ lib }:
let
  inherit (import ./eval-lib.nix { inherit lib; }) vmTest vmNodes;
  client = vmNodes.client.services.nixcache.client;
  pin = vmNodes.client.programs.ssh.knownHosts.nixcache;
in
{
  testScript = vmTest.testScript { nodes = vmNodes; };
  sshd = ''
    MaxStartups ${vmNodes.server.services.openssh.settings.MaxStartups}
    ${vmNodes.server.services.openssh.extraConfig}
  '';
  ssh = vmNodes.client.programs.ssh.extraConfig;
  knownHosts = "${lib.concatStringsSep "," pin.hostNames} ${pin.publicKey}\n";
  inherit (client) host user;
}
