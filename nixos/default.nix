# nixosModules.default: both roles, nothing enabled until
# services.nixcache.server.enable or services.nixcache.client.enable.
{
  imports = [
    ./server.nix
    ./client.nix
  ];
}
