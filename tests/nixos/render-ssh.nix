# The sshd and ssh configuration text the modules write, from the VM test's
# nodes (see ./eval-lib.nix), for scripts/eval-modules.sh to hand to the
# real sshd -T and ssh -G.
{ lib }:
let
  inherit (import ./eval-lib.nix { inherit lib; }) vmNodes;
  client = vmNodes.client.services.nixcache.client;
in
{
  sshd = ''
    MaxStartups ${vmNodes.server.services.openssh.settings.MaxStartups}
    ${vmNodes.server.services.openssh.extraConfig}
  '';
  ssh = vmNodes.client.programs.ssh.extraConfig;
  knownHosts = lib.concatStringsSep "," vmNodes.client.programs.ssh.knownHosts.nixcache.hostNames
    + " " + vmNodes.client.programs.ssh.knownHosts.nixcache.publicKey;
  inherit (client) host user;
}
