# services.nixcache.client, evaluated (see ./eval.nix).
{
  lib,
  evalConfig,
  evalModules,
  expect,
  failedAssertions,
  fakePackage,
  storeText,
  confinedRoot,
  ...
}:
let
  publicKey = lib.fileContents ./test-keys/signing-2.public;
  hostKey = lib.fileContents ./test-keys/host_ed25519.pub;

  client =
    settings: extra:
    evalConfig [
      {
        networking.hostName = "build-01";
        services.nixcache.client = {
          enable = true;
          host = "cache.example.org";
          inherit publicKey hostKey;
        }
        // settings;
      }
      extra
    ];
  minimal = client { } { };
  nixPackage = pname: version: fakePackage pname version { };
in
{
  "client: imported but not enabled changes nothing" =
    let
      config = evalConfig [ ];
    in
    expect.eq "substituters" config.nix.settings.substituters [ "https://cache.nixos.org/" ]
    ++ expect.eq "known hosts" config.programs.ssh.knownHosts { }
    ++ expect.eq "ssh_config" config.programs.ssh.extraConfig "";

  "client: substitutes from the cache, trusting its key, keeping cache.nixos.org" =
    expect.accepted minimal
    ++ expect.eq "substituters" minimal.nix.settings.substituters [
      "ssh://nix-ssh@cache.example.org"
      "https://cache.nixos.org/"
    ]
    ++ expect.eq "trusted-public-keys" minimal.nix.settings.trusted-public-keys [
      "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY="
      publicKey
    ]
    ++ expect.eq "fallback" minimal.nix.settings.fallback true
    ++ expect.eq "require-sigs untouched" minimal.nix.settings.require-sigs true;

  "client: the host key is pinned, on port 22 by name alone" =
    expect.eq "knownHosts" minimal.programs.ssh.knownHosts.nixcache.hostNames [ "cache.example.org" ]
    ++ expect.eq "host key" minimal.programs.ssh.knownHosts.nixcache.publicKey hostKey;

  "client: another port is pinned as [host]:port and set for ssh" =
    let
      config = client { port = 2222; } { };
    in
    expect.eq "knownHosts" config.programs.ssh.knownHosts.nixcache.hostNames [ "[cache.example.org]:2222" ]
    ++ expect.true "ssh_config Port" (lib.hasInfix "\n  Port 2222\n" config.programs.ssh.extraConfig)
    ++ expect.eq "the URL has no port (Nix before 2.20 cannot parse one)" config.nix.settings.substituters [
      "ssh://nix-ssh@cache.example.org"
      "https://cache.nixos.org/"
    ];

  "client: ssh gets join's settings, for this host and user only" =
    let
      text = minimal.programs.ssh.extraConfig;
      lines = map (lib.removePrefix "  ") (lib.filter (lib.hasPrefix "  ") (lib.splitString "\n" text));
    in
    expect.true "Match block" (lib.hasInfix "Match originalhost cache.example.org user nix-ssh\n" text)
    ++ expect.eq "settings" lines [
      "Port 22"
      "IdentityFile /var/lib/nixcache/client/ssh_ed25519"
      "IdentitiesOnly yes"
      "UserKnownHostsFile /dev/null"
      "StrictHostKeyChecking yes"
      "UpdateHostKeys no"
      "CheckHostIP no"
      "BatchMode yes"
      "ConnectTimeout 5"
      "ServerAliveInterval 5"
      "ServerAliveCountMax 3"
      "ControlMaster no"
    ]
    ++ expect.true "the block ends, so later lines apply to every host" (lib.hasSuffix "\nHost *\n" text);

  "client: the daemon's ssh key is made at boot and its public half published" =
    let
      unit = minimal.systemd.services.nixcache-client-key;
    in
    expect.true "runs at boot, before the daemon" (
      lib.elem "multi-user.target" unit.wantedBy && lib.elem "nix-daemon.service" unit.before
    )
    ++ expect.eq "umask" unit.serviceConfig.UMask "0077"
    ++ expect.true "creates the key only when absent" (lib.hasInfix "if [ ! -e \"$KEY\" ]" unit.script)
    ++ expect.eq "key" unit.environment.KEY "/var/lib/nixcache/client/ssh_ed25519"
    ++ expect.eq "published" minimal.environment.etc."nixcache/client-ssh-key.pub".source "/var/lib/nixcache/client/ssh-key.pub";

  # The script itself runs in scripts/eval-modules.sh, on real files.
  "client: the key unit is confined, and refuses a key others can read or own" =
    let
      unit = minimal.systemd.services.nixcache-client-key;
      elsewhere = (client { sshKeyFile = "/root/.ssh/nixcache"; } { }).systemd.services.nixcache-client-key;
    in
    expect.confined "nixcache-client-key" unit.serviceConfig
    ++ expect.eq "writable" (unit.serviceConfig.ReadWritePaths or null) [ "/var/lib/nixcache/client" ]
    ++ expect.eq "another key directory is writable" (elsewhere.serviceConfig.ReadWritePaths or null) [
      "/root/.ssh"
      "/var/lib/nixcache/client"
    ]
    ++ expect.eq "and made before the confined script runs" (elsewhere.serviceConfig.ExecStartPre or null) [
      "+/nix/store/00000000000000000000000000000000-coreutils-9.7/bin/mkdir -p -- /root/.ssh /var/lib/nixcache/client"
    ]
    ++ expect.true "the script checks the key" (lib.hasInfix "refuse_exposed_key \"$KEY\"" unit.script);

  "client: ssh-ng" =
    expect.eq "substituters" (client { protocol = "ssh-ng"; } { }).nix.settings.substituters [
      "ssh-ng://nix-ssh@cache.example.org"
      "https://cache.nixos.org/"
    ];

  "client: protocol nixcache: Nix substitutes from the local substituter, trusting the cache's key" =
    let
      config = client { protocol = "nixcache"; } { };
      other = client {
        protocol = "nixcache";
        substituterPort = 8080;
      } { };
    in
    expect.accepted config
    ++ expect.eq "substituters" config.nix.settings.substituters [
      "http://127.0.0.1:37515"
      "https://cache.nixos.org/"
    ]
    ++ expect.eq "trusted-public-keys" (lib.last config.nix.settings.trusted-public-keys) publicKey
    ++ expect.eq "fallback" config.nix.settings.fallback true
    ++ expect.eq "another port" (lib.head other.nix.settings.substituters) "http://127.0.0.1:8080"
    ++ expect.true "listens there" (
      lib.hasInfix " --listen 127.0.0.1:8080 " other.systemd.services.nixcache-substituter.serviceConfig.ExecStart
    )
    ++ expect.eq "no substituter unit for ssh" (minimal.systemd.services ? nixcache-substituter) false
    ++ expect.eq "nor for the daemon" (minimal.systemd.services ? nix-daemon) false;

  "client: the substituter logs in with the daemon's key, pinning the host key alone" =
    let
      config = client {
        protocol = "nixcache";
        port = 2222;
        sshKeyFile = "/root/.ssh/nixcache";
      } { };
      unit = config.systemd.services.nixcache-substituter;
    in
    expect.eq "ExecStart" unit.serviceConfig.ExecStart (
      lib.concatStringsSep " " [
        "/nix/store/00000000000000000000000000000000-nixcache-0.1.0/bin/nixcache client substituter"
        "--cache ssh://nix-ssh@cache.example.org:2222"
        "--listen 127.0.0.1:37515"
        "--identity-file %d/ssh-key"
        "--known-hosts-file ${storeText "nixcache-known-hosts" "[cache.example.org]:2222 ${hostKey}\n"}"
        "--channels 8"
        "--server-max-sessions 10"
        "--spool-dir %C/nixcache-substituter"
      ]
    )
    ++ expect.eq "the key, as a credential" unit.serviceConfig.LoadCredential [ "ssh-key:/root/.ssh/nixcache" ]
    ++ expect.true "after the key is checked, and not without it" (
      lib.elem "nixcache-client-key.service" unit.requires && lib.elem "nixcache-client-key.service" unit.after
    )
    ++ expect.true "after the network is up" (
      lib.elem "network-online.target" unit.wants && lib.elem "network-online.target" unit.after
    )
    ++ expect.true "starts at boot and keeps restarting" (
      lib.elem "multi-user.target" unit.wantedBy
      && unit.serviceConfig.Restart == "always"
      && unit.unitConfig.StartLimitIntervalSec == 0
    )
    ++ expect.true "the daemon wants it, and starts after it" (
      lib.elem "nixcache-substituter.service" config.systemd.services.nix-daemon.wants
      && lib.elem "nixcache-substituter.service" config.systemd.services.nix-daemon.after
    )
    # systemd holds the port from boot on: no local user can take it while
    # the substituter restarts.
    ++ expect.eq "its port is systemd's socket" config.systemd.sockets.nixcache-substituter.listenStreams [
      "127.0.0.1:37515"
    ]
    ++ expect.true "bound at boot" (lib.elem "sockets.target" config.systemd.sockets.nixcache-substituter.wantedBy)
    ++ expect.true "which the service takes" (lib.elem "nixcache-substituter.socket" unit.requires);

  # Root only where it must be: the credential gives an unprivileged user
  # a private copy of the root-only key.
  "client: the substituter runs unprivileged and confined, with the network alone" =
    let
      sc = (client { protocol = "nixcache"; } { }).systemd.services.nixcache-substituter.serviceConfig;
      networked = {
        PrivateNetwork = null;
        IPAddressDeny = null;
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
        ];
        # Root's ssh directory (join's) hidden, not read.
        ProtectHome = "tmpfs";
      };
    in
    expect.eq "DynamicUser" (sc.DynamicUser or null) true
    ++ expect.eq "CacheDirectory" (sc.CacheDirectory or null) "nixcache-substituter"
    ++ lib.concatLists (
      lib.mapAttrsToList (key: want: expect.eq "substituter's ${key}" (sc.${key} or null) want) (
        removeAttrs confinedRoot [
          "PrivateNetwork"
          "IPAddressDeny"
          "RestrictAddressFamilies"
          "ProtectHome"
        ]
        // networked
      )
    );

  "client: uploadUsers may upload through the substituter, besides root" =
    let
      unit = settings: (client ({ protocol = "nixcache"; } // settings) { }).systemd.services.nixcache-substituter;
      execStart = settings: (unit settings).serviceConfig.ExecStart;
      ssh = client { uploadUsers = [ "ci" ]; } { };
    in
    expect.true "none by default: root alone" (!lib.hasInfix "--upload-user" (execStart { }))
    ++ expect.true "one flag per user" (
      lib.hasSuffix " --spool-dir %C/nixcache-substituter --upload-user ci --upload-user alice" (execStart {
        uploadUsers = [
          "ci"
          "alice"
        ];
      })
    )
    ++ expect.throws "a name that is no user name (or that systemd would expand) is refused" (execStart {
      uploadUsers = [ "ci %u" ];
    })
    # Which user owns a connection is in /proc/net/tcp, which ProcSubset=pid
    # hides; other users' processes stay hidden.
    ++ expect.true "the substituter can tell who connected" (
      (unit { }).serviceConfig.ProcSubset == "all" && (unit { }).serviceConfig.ProtectProc == "invisible"
    )
    ++ expect.true "the description says the role is the cache's business" (
      let
        d = (evalModules [ ]).options.services.nixcache.client.uploadUsers.description;
      in
      lib.hasInfix "the cache's business" d && lib.hasInfix "role `push`" d
    )
    ++ expect.accepted ssh
    ++ expect.true "without the substituter it does nothing, and says so" (
      lib.any (lib.hasInfix "uploadUsers is set, but protocol = \"ssh\"") ssh.warnings
    )
    ++ expect.eq "no warning by default" minimal.warnings [ ];

  "client: the substituter's channels stay under the cache's MaxSessions" =
    let
      channels = settings: client ({ protocol = "nixcache"; } // settings) { };
      execStart = config: config.systemd.services.nixcache-substituter.serviceConfig.ExecStart;
    in
    expect.eq "8 by default" (channels { }).services.nixcache.client.channels 8
    ++ expect.true "fewer when the cache allows fewer" (
      lib.hasInfix "--channels 4 --server-max-sessions 4 " (execStart (channels { maxSessions = 4; }))
    )
    ++ expect.accepted (channels { maxSessions = 4; })
    ++ expect.accepted (channels {
      channels = 16;
      maxSessions = 16;
    })
    ++ expect.refused (channels { channels = 11; }) [
      "channels = 11 is more than the cache's sshd MaxSessions"
      "maxSessions = 10"
      "raise services.nixcache.server.maxSessions"
    ]
    ++ expect.accepted (client { channels = 11; } { });

  # maxConnections is for Nix's own ssh stores, which protocol nixcache
  # does not use.
  "client: protocol nixcache leaves maxConnections alone" =
    expect.accepted (client {
      protocol = "nixcache";
      maxConnections = 11;
    } { nix.package = nixPackage "nix" "2.31.4"; });

  "client: an admin's fallback setting wins" =
    expect.eq "fallback" (client { } { nix.settings.fallback = false; }).nix.settings.fallback false;

  # nixos-25.11's Nix (nixVersions.stable = nix_2_31) predates the fix.
  "client: max-connections is refused where Nix deadlocks" =
    expect.refused (client { maxConnections = 4; } { nix.package = nixPackage "nix" "2.31.4"; }) [
      "needs Nix 2.32 or Lix 2.93"
      "nix 2.31.4"
    ];

  "client: max-connections on Nix 2.32 and Lix 2.93" =
    let
      nix = client { maxConnections = 4; } { nix.package = nixPackage "nix" "2.32.0"; };
      lix = client { maxConnections = 4; } { nix.package = nixPackage "lix" "2.93.0"; };
      oldLix = client { maxConnections = 4; } { nix.package = nixPackage "lix" "2.92.0"; };
    in
    expect.accepted nix
    ++ expect.accepted lix
    ++ expect.refused oldLix [ "lix 2.92.0" ]
    ++ expect.eq "URL" (lib.head nix.nix.settings.substituters) "ssh://nix-ssh@cache.example.org?max-connections=4";

  # nixos-26.05's Nix (nixVersions.stable = nix_2_34, the stand-in's 2.34.6)
  # has the fix; the default stays 1 all the same.
  "client: one connection by default; more on nixos-26.05's Nix 2.34" =
    let
      eight = client { maxConnections = 8; } { };
    in
    expect.eq "default" minimal.services.nixcache.client.maxConnections 1
    ++ expect.eq "default URL" (lib.head minimal.nix.settings.substituters) "ssh://nix-ssh@cache.example.org"
    ++ expect.eq "stand-in Nix" minimal.nix.package.version "2.34.6"
    ++ expect.accepted eight
    ++ expect.eq "URL" (lib.head eight.nix.settings.substituters) "ssh://nix-ssh@cache.example.org?max-connections=8";

  # Nix runs max-connections sessions over one SSH master: past sshd's
  # MaxSessions (10 by default) it fails with "protocol mismatch".
  "client: max-connections past the cache's MaxSessions is refused on Nix" =
    let
      ten = client { maxConnections = 10; } { };
      eleven = client { maxConnections = 11; } { };
      raised = client {
        maxConnections = 16;
        maxSessions = 16;
      } { };
      lowered = client {
        maxConnections = 4;
        maxSessions = 2;
      } { };
      lix = client { maxConnections = 11; } { nix.package = nixPackage "lix" "2.93.0"; };
    in
    expect.accepted ten
    ++ expect.refused eleven [
      "maxConnections = 11 is more than the cache's sshd MaxSessions"
      "maxSessions = 10"
      "raise services.nixcache.server.maxSessions"
    ]
    ++ expect.accepted raised
    ++ expect.refused lowered [ "maxSessions = 2" ]
    ++ expect.accepted lix;

  "client: refuses localhost and IPv6 literals" =
    expect.refused (client { host = "localhost"; } { }) [ "host = \"localhost\"" ]
    ++ expect.refused (client { host = "fd00::1"; } { }) [ "cannot take an IPv6 literal" ]
    ++ expect.refused (client { host = "-oProxyCommand=x"; } { }) [ "must be a host name" ];

  "client: refuses a malformed signing key and host key" =
    expect.refused (client { publicKey = "ssh-ed25519 AAAA"; } { }) [ "NAME:BASE64" ]
    ++ expect.refused (client { hostKey = "cache.example.org ssh-ed25519 AAAA"; } { }) [
      "must be one SSH host public key"
    ];

  "client: refuses a secret key pasted as publicKey, without repeating it" =
    let
      secret = lib.fileContents ./test-keys/signing-2.secret;
      config = client { publicKey = secret; } { };
    in
    expect.refused config [ "publicKey must be" ]
    ++ expect.true "the secret is not in any message" (
      !lib.any (lib.hasInfix (lib.last (lib.splitString ":" secret))) (failedAssertions config)
    );

  "client: refuses an ssh key in the store" =
    expect.refused (client { sshKeyFile = "/nix/store/00000000000000000000000000000000-key"; } { }) [
      "sshKeyFile"
      "is inside the Nix store"
    ]
    ++ expect.refused (client { sshKeyFile = ./test-keys/client_ed25519; } { }) [ "path literal" ]
    ++ expect.refused (client { sshKeyFile = "/dev/shm/nixcache"; } { }) [ "sshKeyFile" "temporary" ];

  "both roles on one machine" =
    let
      config = client { } {
        services.nixcache.server = {
          enable = true;
          registryFile = ./registry.toml;
        };
      };
    in
    expect.accepted config
    ++ expect.eq "secret-key-files" config.nix.settings.secret-key-files [ "/var/lib/nixcache/secret-key" ]
    ++ expect.eq "substituters" config.nix.settings.substituters [
      "ssh://nix-ssh@cache.example.org"
      "https://cache.nixos.org/"
    ];
}
