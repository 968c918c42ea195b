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

  substituter =
    "${cfg.protocol}://${cfg.user}@${cfg.host}"
    + lib.optionalString (cfg.maxConnections > 1) "?max-connections=${toString cfg.maxConnections}";

  # known_hosts names a host on another port "[host]:port".
  knownHostName = if cfg.port == 22 then cfg.host else "[${cfg.host}]:${toString cfg.port}";

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
      description = "The nixcache package, installed for `nixcache verify`.";
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
      type = common.protocolType;
      default = "ssh";
      description = "The cache's `services.nixcache.server.protocol`: the substituter is `ssh://` or `ssh-ng://`.";
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
        refused: sshd turns away the sessions past its limit.
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
        assertion = cfg.maxConnections == 1 || maxConnectionsSafe;
        message = "services.nixcache.client.maxConnections = ${toString cfg.maxConnections} needs Nix 2.32 or Lix 2.93; nix.package is ${config.nix.package.pname or "nix"} ${nixVersion}, whose ssh stores deadlock with more than one connection (NixOS/nix#13902). Keep it at 1.";
      }
      {
        # Nix's SSH master carries every connection as a session; Lix 2.93
        # has no master.
        assertion = nixIsLix || cfg.maxConnections <= cfg.maxSessions;
        message = "services.nixcache.client.maxConnections = ${toString cfg.maxConnections} is more than the cache's sshd MaxSessions (services.nixcache.client.maxSessions = ${toString cfg.maxSessions}; OpenSSH's default is 10): Nix runs its connections as sessions of one SSH connection, and sshd refuses those past MaxSessions, which Nix reports as a protocol mismatch. Lower maxConnections, or raise services.nixcache.server.maxSessions on the cache and set maxSessions here to match.";
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
    systemd.tmpfiles.rules = [
      "d /var/lib/nixcache 0755 root root -"
      "d ${stateDir} 0755 root root -"
    ];
    environment.etc."nixcache/client-ssh-key.pub".source = publicSshKeyState;

    environment.systemPackages = [ cfg.package ];
  };
}
