# services.nixcache.client: substitute from a nixcache server over SSH,
# trusting its signing key and its pinned host key, never prompting.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.nixcache.client;
  common = import ./common.nix { inherit lib; };

  stateDir = "/var/lib/nixcache/client";
  publicSshKeyState = "${stateDir}/ssh-key.pub";
  sshKeyFile = toString cfg.sshKeyFile;
  keyDirs = lib.unique [
    (dirOf sshKeyFile)
    stateDir
  ];

  # Nix talks to the cache itself over ssh, or to the local substituter,
  # which holds one SSH connection to the cache.
  viaSubstituter = cfg.protocol == "nixcache";
  substituter =
    if viaSubstituter then
      "http://127.0.0.1:${toString cfg.substituterPort}"
    else
      "${cfg.protocol}://${cfg.user}@${cfg.host}"
      + lib.optionalString (cfg.maxConnections > 1) "?max-connections=${toString cfg.maxConnections}";

  # known_hosts names a host on another port "[host]:port".
  knownHostName = if cfg.port == 22 then cfg.host else "[${cfg.host}]:${toString cfg.port}";
  # The substituter's pin, and nothing else: not the system's known hosts.
  knownHostsFile = pkgs.writeText "nixcache-known-hosts" "${knownHostName} ${cfg.hostKey}\n";

  # With more than one connection Nix starts an SSH master, which deadlocks
  # before ssh even runs until Nix 2.32 (NixOS/nix#13902); Lix dropped the
  # master in 2.93.
  nixVersion = config.nix.package.version or "0";
  nixIsLix = (config.nix.package.pname or "") == "lix";
  maxConnectionsSafe =
    if nixIsLix then
      lib.versionAtLeast nixVersion "2.93"
    else
      lib.versionAtLeast nixVersion "2.32";
in
{
  options.services.nixcache.client = {
    enable = lib.mkEnableOption "substituting from a nixcache server over SSH";

    package = common.packageOption {
      inherit pkgs;
      description = "The nixcache package, installed for `nixcache verify`; with protocol `nixcache` it runs the substituter.";
    };

    host = lib.mkOption {
      type = lib.types.str;
      example = "cache.example.org";
      description = "The cache's host name or IPv4 address, as clients reach it.";
    };

    port = lib.mkOption {
      type = lib.types.port;
      default = 22;
      description = "The cache's SSH port.";
    };

    user = lib.mkOption {
      type = lib.types.str;
      default = common.defaultUser;
      description = "The account on the cache (`services.nixcache.server.user`).";
    };

    protocol = lib.mkOption {
      type = lib.types.enum [
        "ssh"
        "ssh-ng"
        "nixcache"
      ];
      default = "ssh";
      description = ''
        How Nix reaches the cache. `ssh` and `ssh-ng` (the cache's
        `services.nixcache.server.protocol`): the substituter is `ssh://` or
        `ssh-ng://`, and every Nix command opens its own SSH connection.
        `nixcache`: `nixcache-substituter.service` keeps one SSH connection
        to the cache and serves it to Nix as a binary cache on
        `http://127.0.0.1:''${substituterPort}`, which is much faster for
        many paths; a cache of either protocol serves it.
      '';
    };

    substituterPort = lib.mkOption {
      type = lib.types.ints.between 1 65535;
      default = 37515;
      example = 8080;
      description = ''
        The loopback TCP port `nixcache-substituter.service` listens on
        (protocol `nixcache` only); `nix.settings.substituters` gets
        `http://127.0.0.1:PORT`. Any local user can fetch from it what
        this machine's key may fetch from the cache.
      '';
    };

    uploadUsers = lib.mkOption {
      type = lib.types.listOf (lib.types.strMatching "[A-Za-z_][A-Za-z0-9_.-]*");
      default = [ ];
      example = [ "ci" ];
      description = ''
        Local users besides root who may upload through the substituter
        (protocol `nixcache`): `nixcache push`, or `nix copy --to
        http://127.0.0.1:''${substituterPort}`. The substituter asks the
        kernel which user owns each connection and refuses an upload from
        anyone else; downloads stay open to every local user.

        Whether uploads are accepted at all is the cache's business: the
        cache's admin gives this machine's key the role `push`
        (`services.nixcache.server.clients.<name>.role`, or `nixcache
        clients add NAME --key KEY --role push`). A key with the role
        `pull` gets "403" for every upload, whatever this list says.
      '';
    };

    channels = lib.mkOption {
      type = lib.types.ints.positive;
      default = lib.min 8 cfg.maxSessions;
      defaultText = lib.literalExpression "lib.min 8 config.services.nixcache.client.maxSessions";
      example = 16;
      description = ''
        How many requests the substituter (protocol `nixcache`) has in
        flight at once, each on its own session of its one SSH connection.
        At most `maxSessions`: sshd refuses the sessions past its
        `MaxSessions`.
      '';
    };

    publicKey = lib.mkOption {
      type = lib.types.str;
      example = "cache.example.org-1:OzAbNkYWs5nq8WXm3LwEtFXqlc9hNrgwJqaR4jVq2NA=";
      description = ''
        The cache's signing key ("NAME:BASE64", the content of
        `/etc/nixcache/public-key` on the server), added to
        `nix.settings.trusted-public-keys`. Paths it did not sign are refused.
      '';
    };

    hostKey = lib.mkOption {
      type = lib.types.str;
      example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ3...";
      description = ''
        The cache's SSH host key ("TYPE BASE64", e.g. the content of
        `/etc/ssh/ssh_host_ed25519_key.pub` on the server), pinned through
        `programs.ssh.knownHosts`. Nothing else is accepted for the host, and
        ssh never asks.
      '';
    };

    sshKeyFile = lib.mkOption {
      type = common.secretPathType;
      default = "${stateDir}/ssh_ed25519";
      description = ''
        The private SSH key root's ssh (run by the Nix daemon) logs in with,
        outside the Nix store. Created at boot by
        `nixcache-client-key.service` if missing (ed25519, mode 0600); its
        public half is published in `sshPublicKeyFile` for the cache's admin
        to register.
      '';
    };

    sshPublicKeyFile = lib.mkOption {
      type = lib.types.str;
      default = "/etc/nixcache/client-ssh-key.pub";
      readOnly = true;
      description = "Where the public half of `sshKeyFile` is published, readable by every user.";
    };

    maxConnections = lib.mkOption {
      type = lib.types.ints.positive;
      default = 1;
      example = 8;
      description = ''
        SSH connections Nix may open to the cache at once (the store's
        `max-connections`). More than 1 needs Nix 2.32 or Lix 2.93: earlier
        versions deadlock (NixOS/nix#13902), nixos-25.11's Nix 2.31 among
        them. Nix runs the connections as sessions of one SSH connection, so
        it also needs at most `maxSessions`, the cache's sshd limit (10 by
        default); Lix 2.93 opens separate connections.

        More connections hide latency: measured with Nix 2.35 as the client,
        8 fetched 500 paths over a 40 ms link in 34.8 s instead of 55.8 s.
        The default stays 1, which works with every Nix and Lix and any
        cache's sshd.
      '';
    };

    maxSessions = lib.mkOption {
      type = lib.types.ints.positive;
      default = 10;
      example = 16;
      description = ''
        The cache's sshd `MaxSessions` for its account:
        `services.nixcache.server.maxSessions` on a NixOS cache, OpenSSH's
        default of 10 elsewhere. On Nix, a `maxConnections` above it is
        refused, and so are more `channels`: sshd turns away the sessions
        past its limit.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = builtins.match "[A-Za-z0-9][A-Za-z0-9.-]*" cfg.host != null && cfg.host != "localhost";
        message = "services.nixcache.client.host = \"${cfg.host}\" must be a host name or IPv4 address (Nix's ssh stores cannot take an IPv6 literal, and for \"localhost\" Nix skips ssh).";
      }
      {
        assertion = builtins.match "[a-z_][a-z0-9_.-]*" cfg.user != null;
        message = "services.nixcache.client.user = \"${cfg.user}\" is not a user name.";
      }
      {
        assertion = builtins.match "[^:[:space:]]+:[A-Za-z0-9+/]{43}=" cfg.publicKey != null;
        message = "services.nixcache.client.publicKey must be the cache's public signing key \"NAME:BASE64\" (the content of /etc/nixcache/public-key on the server); the value given is not one (and is not repeated here, in case it is a secret key).";
      }
      {
        assertion = builtins.match "(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+={0,2}( [^\n]*)?" cfg.hostKey != null;
        message = "services.nixcache.client.hostKey must be one SSH host public key \"TYPE BASE64\", such as the content of /etc/ssh/ssh_host_ed25519_key.pub on the server.";
      }
      {
        assertion = viaSubstituter || cfg.maxConnections == 1 || maxConnectionsSafe;
        message = "services.nixcache.client.maxConnections = ${toString cfg.maxConnections} needs Nix 2.32 or Lix 2.93; nix.package is ${config.nix.package.pname or "nix"} ${nixVersion}, whose ssh stores deadlock with more than one connection (NixOS/nix#13902). Keep it at 1.";
      }
      {
        # Nix's SSH master carries every connection as a session; Lix 2.93
        # has no master.
        assertion = viaSubstituter || nixIsLix || cfg.maxConnections <= cfg.maxSessions;
        message = "services.nixcache.client.maxConnections = ${toString cfg.maxConnections} is more than the cache's sshd MaxSessions (services.nixcache.client.maxSessions = ${toString cfg.maxSessions}; OpenSSH's default is 10): Nix runs its connections as sessions of one SSH connection, and sshd refuses those past MaxSessions, which Nix reports as a protocol mismatch. Lower maxConnections, or raise services.nixcache.server.maxSessions on the cache and set maxSessions here to match.";
      }
      {
        assertion = !viaSubstituter || cfg.channels <= cfg.maxSessions;
        message = "services.nixcache.client.channels = ${toString cfg.channels} is more than the cache's sshd MaxSessions (services.nixcache.client.maxSessions = ${toString cfg.maxSessions}; OpenSSH's default is 10): the substituter runs its channels as sessions of one SSH connection, and sshd refuses those past MaxSessions. Lower channels, or raise services.nixcache.server.maxSessions on the cache and set maxSessions here to match.";
      }
    ]
    ++ map (message: {
      assertion = false;
      inherit message;
    }) (
      common.secretPathProblems {
        option = "services.nixcache.client.sshKeyFile";
        value = cfg.sshKeyFile;
        what = "the daemon's SSH key";
        default = "${stateDir}/ssh_ed25519";
      }
    );

    # Uploads go through the substituter alone.
    warnings = lib.optional (cfg.uploadUsers != [ ] && !viaSubstituter) ''
      services.nixcache.client.uploadUsers is set, but protocol = "${cfg.protocol}": uploads go through the local substituter only, which protocol = "nixcache" runs. Set that protocol, or drop uploadUsers.
    '';

    nix.settings = {
      # Added to the list, which keeps cache.nixos.org.
      substituters = [ substituter ];
      trusted-public-keys = [ cfg.publicKey ];
      # An unreachable cache must not fail builds: build instead.
      fallback = lib.mkDefault true;
    };

    programs.ssh.knownHosts.nixcache = {
      hostNames = [ knownHostName ];
      publicKey = cfg.hostKey;
    };

    # The settings `nixcache client join` writes, chosen in its measurements:
    # a dead cache costs ConnectTimeout (5 s) per connection instead of a
    # TCP timeout, a hung one is dropped after 15 s, and no prompt can ever
    # block the daemon. ControlMaster no: Nix manages its own connections.
    programs.ssh.extraConfig = ''
      # nixcache: how root's ssh, run by the Nix daemon, reaches the cache.
      Match originalhost ${cfg.host} user ${cfg.user}
        Port ${toString cfg.port}
        IdentityFile ${sshKeyFile}
        IdentitiesOnly yes
        UserKnownHostsFile /dev/null
        StrictHostKeyChecking yes
        UpdateHostKeys no
        CheckHostIP no
        BatchMode yes
        ConnectTimeout 5
        ServerAliveInterval 5
        ServerAliveCountMax 3
        ControlMaster no
      Host *
    '';

    systemd.services.nixcache-client-key = {
      description = "Create the SSH key the Nix daemon uses to reach the nixcache server, and check it";
      documentation = [ "https://github.com/nixcache/nixcache#nixos" ];
      wantedBy = [ "multi-user.target" ];
      before = [ "nix-daemon.service" ];
      path = [ config.programs.ssh.package ];
      environment = {
        KEY = sshKeyFile;
        PUBLIC = publicSshKeyState;
        NAME = config.networking.hostName;
      };
      script = ''
        ${common.exposedKeyCheck}
        if [ ! -e "$KEY" ]; then
          ssh-keygen -q -t ed25519 -N "" -C "root@$NAME" -f "$KEY" < /dev/null
        fi
        refuse_exposed_key "$KEY" services.nixcache.client.sshKeyFile ${lib.escapeShellArg "then systemctl restart nixcache-client-key.service. If someone may have, delete it and restart that unit to make a new key, and have the cache's admin replace this machine's registered key."}
        ssh-keygen -y -f "$KEY" > "$PUBLIC.tmp"
        chmod 0644 "$PUBLIC.tmp"
        mv "$PUBLIC.tmp" "$PUBLIC"
        # The admin pastes this line into a shell: only words that cannot
        # need quoting (the host name NixOS checked, the key type and
        # base64 ssh-keygen wrote) and join's fixed comment, never the key
        # file's own comment.
        read -r type blob _ < "$PUBLIC"
        echo "the cache's admin registers this machine with: nixcache clients add '$NAME' --key '$type $blob nixcache@$NAME'"
      '';
      serviceConfig = common.confinedRoot // {
        Type = "oneshot";
        RemainAfterExit = true;
        # Where the key is made and its public half published; created with
        # full privileges first, as a directory must exist to be made
        # writable.
        ReadWritePaths = keyDirs;
        ExecStartPre = [ "+${pkgs.coreutils}/bin/mkdir -p -- ${lib.escapeShellArgs keyDirs}" ];
      };
    };
    # protocol = "nixcache": Nix fetches from the substituter on loopback,
    # which logs in with the daemon's key as root's ssh would, and checks
    # the cache's host key against the pin alone.
    systemd.services.nixcache-substituter = lib.mkIf viaSubstituter {
      description = "Serve the nixcache server to the local Nix over one SSH connection";
      documentation = [ "https://github.com/nixcache/nixcache#nixos" ];
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      # Not without the key checked: a key others could read is refused
      # there, and nothing logs in with it. Its listening socket comes from
      # the socket unit.
      requires = [
        "nixcache-client-key.service"
        "nixcache-substituter.socket"
      ];
      after = [
        "network-online.target"
        "nixcache-client-key.service"
      ];
      # An unreachable cache does not stop the substituter: it keeps
      # listening, answers at once so that Nix builds (fallback), and
      # reconnects. It exits only on a host key other than the pinned one
      # or a refused login at start; then it is started again, forever,
      # since a substituter URL nothing listens on makes Nix 2.8 abort
      # builds (NixOS/nix#6445).
      unitConfig.StartLimitIntervalSec = 0;
      serviceConfig = {
        ExecStart = lib.concatStringsSep " " (
          [
            "${lib.getExe cfg.package} client substituter"
            "--cache ssh://${cfg.user}@${cfg.host}:${toString cfg.port}"
            "--listen 127.0.0.1:${toString cfg.substituterPort}"
            "--identity-file %d/ssh-key"
            "--known-hosts-file ${knownHostsFile}"
            "--channels ${toString cfg.channels}"
            "--server-max-sessions ${toString cfg.maxSessions}"
            "--spool-dir %C/nixcache-substituter"
          ]
          ++ map (user: "--upload-user ${user}") cfg.uploadUsers
        );
        Restart = "always";
        RestartSec = 5;
        # The key reaches the service as a credential: root reads it, the
        # service sees a private copy.
        LoadCredential = [ "ssh-key:${sshKeyFile}" ];

        # Identity: an unprivileged dynamic user.
        DynamicUser = true;
        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        NoNewPrivileges = true;
        # Filesystem: reads its credential and the pin in the store, writes
        # its spool of prefetched NARs. Root's ssh directory (join's) is
        # hidden: everything comes from the flags.
        ProtectSystem = "strict";
        ProtectHome = "tmpfs";
        PrivateTmp = true;
        PrivateDevices = true;
        UMask = "0077";
        CacheDirectory = "nixcache-substituter";
        # Network: TCP to the cache, and the loopback listener.
        RestrictAddressFamilies = [
          "AF_INET"
          "AF_INET6"
        ];
      }
      // common.isolation
      // {
        # An upload is taken only from root and uploadUsers: the
        # substituter reads which user owns the other end of the
        # connection in /proc/net/tcp (and tcp6), which ProcSubset=pid
        # hides. Other users' processes stay invisible (ProtectProc).
        ProcSubset = "all";
      };
    };
    # systemd holds the substituter's port from boot on, across restarts:
    # it is not privileged, and a local user who bound it first would get
    # every request Nix makes (which paths the machine builds) and could
    # answer in the substituter's place (not with content: signatures
    # decide that).
    systemd.sockets.nixcache-substituter = lib.mkIf viaSubstituter {
      description = "The nixcache substituter's port";
      wantedBy = [ "sockets.target" ];
      listenStreams = [ "127.0.0.1:${toString cfg.substituterPort}" ];
    };
    systemd.services.nix-daemon = lib.mkIf viaSubstituter {
      wants = [ "nixcache-substituter.service" ];
      after = [ "nixcache-substituter.service" ];
    };

    systemd.tmpfiles.rules = [
      "d /var/lib/nixcache 0755 root root -"
      "d ${stateDir} 0755 root root -"
    ];
    environment.etc."nixcache/client-ssh-key.pub".source = publicSshKeyState;

    environment.systemPackages = [ cfg.package ];
  };
}
