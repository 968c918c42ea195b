# What the server and client modules share: the package option and the
# check that a secret's path stays out of the world-readable store.
{ lib }:
{
  # How a cache serves clients: the substituter's URL scheme, and so the
  # server's forced command. Both roles must agree on it and on the account.
  protocolType = lib.types.enum [
    "ssh"
    "ssh-ng"
  ];
  defaultUser = "nix-ssh";

  packageOption =
    { pkgs, description }:
    lib.mkOption {
      type = lib.types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage \"\${nixcache}/nixos/package.nix\" { }";
      inherit description;
    };

  # A secret file's path: a string, or a path literal that the assertions
  # refuse with a message rather than with a type error.
  secretPathType = lib.types.either lib.types.str lib.types.path;

  # Why `value`, given as `option`, is no place for `what`; [ ] if it is.
  # toString never copies a path literal into the store; interpolating
  # one would.
  secretPathProblems =
    {
      option,
      value,
      what,
      default,
    }:
    if builtins.isPath value then
      [
        "${option} is the path literal ${toString value}; a path literal is copied into the Nix store, which every user can read. Give it as a string, e.g. \"${default}\""
      ]
    else if lib.hasPrefix "${builtins.storeDir}/" value then
      [
        "${option} = \"${value}\" is inside the Nix store, which every user can read: keep ${what} outside it (the default ${default} is generated at first boot)"
      ]
    else if !lib.hasPrefix "/" value then
      [ "${option} = \"${value}\" must be an absolute path" ]
    else
      [ ];
}
