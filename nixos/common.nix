# What the server and client modules share: the package option, the checks
# that a secret's path stays out of the world-readable store and that the
# file itself is private, and the confinement of the units that run as root.
{ lib }:
let
  temporaryDirs = [
    "/tmp/"
    "/var/tmp/"
    "/dev/shm/"
  ];

  # systemd settings every nixcache unit shares: the kernel and other
  # processes out of reach, and a system call filter.
  isolation = {
    ProtectKernelTunables = true;
    ProtectKernelModules = true;
    ProtectKernelLogs = true;
    ProtectControlGroups = true;
    ProtectClock = true;
    ProtectHostname = true;
    ProtectProc = "invisible";
    ProcSubset = "pid";
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
    # The Go runtime raises its open-file limit at start; let that fail
    # quietly instead of killing the process.
    SystemCallErrorNumber = "EPERM";
  };
in
{
  inherit isolation;

  # How a cache serves Nix's own ssh stores: `ssh-ng` also lets the
  # dispatcher run nix-daemon --stdio. A client names the same scheme, or
  # `nixcache` (its local substituter), which a cache of either serves.
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
    # The key units see a private /tmp and /dev: a key made there would
    # vanish with the unit.
    else if lib.any (dir: lib.hasPrefix dir value) temporaryDirs then
      [
        "${option} = \"${value}\" is in a temporary directory (${lib.concatStringsSep ", " temporaryDirs}), which is cleaned and which the key units see a private copy of: keep ${what} elsewhere, e.g. \"${default}\""
      ]
    else
      [ ];

  # A shell function for the key units' scripts:
  #   refuse_exposed_key FILE OPTION HINT
  # (HINT: what to do after the fix, or if the key may have been read)
  # fails, saying what to do, unless FILE (through any symlink) is owned by
  # the user running it (root, in the units) and no one else may read or
  # change it. Whoever could read a key may have copied it: a warning at
  # boot would be read too late, if ever.
  exposedKeyCheck = ''
    refuse_exposed_key() {
      local file=$1 option=$2 hint=$3 found owner mode
      if ! found=$(stat -L -c '%u %a' -- "$file"); then
        echo "$option: cannot read the owner and mode of $file" >&2
        return 1
      fi
      owner=''${found% *} mode=$(printf '%04o' "$((8#''${found#* }))")
      if [ "$owner" != "$EUID" ]; then
        echo "$option: $file is owned by uid $owner, which can read it; refusing to use it. If that user cannot have read it: chown $EUID $file, $hint" >&2
        return 1
      fi
      if (( 8#$mode & 8#077 )); then
        echo "$option: $file has mode $mode, so others can read or change it; refusing to use it. If no one else can have read it: chmod 0600 $file, $hint" >&2
        return 1
      fi
    }
  '';

  # systemd settings for a unit that runs as root to make or check a key:
  # root without capabilities, writing nothing but its ReadWritePaths and
  # StateDirectory, with no network or socket of any kind (a Unix socket
  # would reach systemd's, where uid 0 is all it takes), and a system call
  # filter.
  confinedRoot = {
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    NoNewPrivileges = true;
    # Filesystem: a key may be read from under /root or /home, never written
    # there unless it is in ReadWritePaths.
    ProtectSystem = "strict";
    ProtectHome = "read-only";
    PrivateTmp = true;
    PrivateDevices = true;
    UMask = "0077";
    # Network: none, and no sockets.
    PrivateNetwork = true;
    RestrictAddressFamilies = "none";
    IPAddressDeny = "any";
  }
  // isolation;

  # systemd settings for an unprivileged unit whose only peer is the Nix
  # daemon (the signer, the publisher): no capabilities, a read-only
  # system and no home, no network but Unix sockets, a system call filter.
  # The unit adds its identity, what it may write and its umask.
  confinedDaemonClient = {
    CapabilityBoundingSet = "";
    AmbientCapabilities = "";
    NoNewPrivileges = true;
    ProtectSystem = "strict";
    ProtectHome = true;
    PrivateTmp = true;
    PrivateDevices = true;
    PrivateNetwork = true;
    RestrictAddressFamilies = [ "AF_UNIX" ];
    IPAddressDeny = "any";
  }
  // isolation;
}
