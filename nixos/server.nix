# services.nixcache.server: serve this machine's Nix store over SSH to the
# registered clients, sign everything it holds, and import what push
# clients upload (docs/uploads.md).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  cfg = config.services.nixcache.server;
  registry = import ./registry.nix;
  common = import ./common.nix { inherit lib; };

  stateDir = "/var/lib/nixcache";
  publicKeyState = "${stateDir}/public-key";

  clients = registry.merge (
    [ (registry.normalise "services.nixcache.server.clients" cfg.clients) ]
    ++ lib.optional (cfg.registryFile != null) (registry.readFile cfg.registryFile)
  );

  # The clients `nixcache serve` lets in, checked at build time by the CLI
  # that reads it at every login: a key or comment it refuses would
  # otherwise lock every client out.
  registryStoreFile = pkgs.writeTextFile {
    name = "nixcache-clients.toml";
    text = registry.toTOML {
      inherit (clients) clients;
      header = ''
        # Written by the nixcache NixOS module from services.nixcache.server.clients
        # and registryFile: the clients `nixcache serve` lets in. Change those.
      '';
    };
    checkPhase = ''
      ${lib.getExe cfg.package} clients list --registry "$target" > /dev/null
    '';
  };
  # Read by every login, through /etc so that a rebuild that revokes a key
  # reaches the sessions sshd opens later on a connection made before it
  # (the substituter keeps one open), whose ForceCommand is the old one.
  registryPath = "/etc/nixcache/clients.toml";

  # The publisher: the one process that holds the cache key besides the
  # daemon and the signer, imports uploads and writes the audit log. serve
  # (the cache account) reaches it through this socket, which systemd holds.
  publisherSocket = "/run/nixcache/publisher.sock";
  publisherUser = "nixcache-publisher";
  # Where the publisher roots what push clients upload, one directory per
  # client; the only place it may write.
  pushedDir = "${cfg.gcRootsDir}/pushed";
  auditLogProblems =
    let
      f = cfg.auditLog;
    in
    if f == null then
      [ ]
    # Also a word for systemd's command lines, to its last character: no
    # spaces, quotes, % or backslash (which would join the unit's next line
    # to a root ExecStartPre). No . or .. either: root's chown and chmod
    # would take the directory.
    else if
      builtins.match "(/[A-Za-z0-9._+-]+)+" f == null || builtins.match "(.*/)?[.][.]?(/.*)?" f != null
    then
      [
        "services.nixcache.server.auditLog = \"${f}\" must be the absolute path of a file, in letters, digits and . _ / + -"
      ]
    # systemd makes the log's directory the publisher's (LogsDirectory),
    # safely: no root step that a symlink planted in the directory could
    # turn onto another file. So the directory is one of its own under
    # /var/log.
    else if !(lib.hasPrefix "/var/log/" (dirOf f)) then
      [ "services.nixcache.server.auditLog = \"${f}\" must be a file in a directory of its own under /var/log, which systemd makes the publisher's: use e.g. \"/var/log/nixcache/audit.log\"" ]
    else
      [ ];
  auditLogsDirectory = lib.removePrefix "/var/log/" (dirOf cfg.auditLog);

  pushClients = lib.filterAttrs (_: c: (c.role or "pull") == "push") clients.clients;

  # The dispatcher: it finds the registered client whose key logged in, and
  # refuses any other, then serves what the client asked for.
  # nixcache-binary-cache and nix-store --serve (without --write) answer
  # queries and send NARs and nothing else; uploads on the channel go to
  # the publisher, which takes them from push clients alone. nix-daemon
  # --stdio (only with --allow-ssh-ng) serves a full, if untrusted, daemon
  # connection: build derivations, add content-addressed or validly signed
  # paths, add GC roots, collect garbage. In published mode it serves only
  # the channel, and only the closures of the roots.
  serveCommand = lib.concatStringsSep " " (
    [
      "${lib.getExe cfg.package} serve --registry ${registryPath}"
      "--nix-store ${config.nix.package}/bin/nix-store"
      "--nix-daemon ${config.nix.package}/bin/nix-daemon"
      "--publisher ${publisherSocket}"
      "--publish-mode ${cfg.publishMode}"
      "--roots ${cfg.gcRootsDir}"
    ]
    ++ lib.optional (cfg.protocol == "ssh-ng") "--allow-ssh-ng"
  );

  # toString never copies a path literal into the store (the assertions
  # refuse one anyway); interpolating it would.
  secretKeyFiles = map toString ([ cfg.secretKeyFile ] ++ cfg.extraSecretKeyFiles);
  secretKeyDir = dirOf (lib.head secretKeyFiles);

  keyFileProblems =
    option: value:
    common.secretPathProblems {
      inherit option value;
      what = "signing keys";
      default = "${stateDir}/secret-key";
    };

  nixIsLix = (config.nix.package.pname or "") == "lix";
  # AddSignatures needs no trust from Nix 2.17 on (and in Lix, forked
  # later), so the signer runs as an unprivileged dynamic user.
  untrustedMaySign = nixIsLix || lib.versionAtLeast (config.nix.package.version or "0") "2.17";

  # The Match block's MaxSessions replaces the global one for the account:
  # keep a global value an admin set, and OpenSSH's 10 otherwise (also for
  # a global 0, which would leave the account no session for its command).
  globalMaxSessions =
    let
      v = config.services.openssh.settings.MaxSessions or null;
      n =
        if builtins.isInt v then
          v
        else if builtins.isString v && builtins.match "[0-9]+" v != null then
          lib.toInt v
        else
          0;
    in
    if n > 0 then n else 10;
in
{
  options.services.nixcache.server = {
    enable = lib.mkEnableOption "serving this machine's Nix store as a private, signed binary cache over SSH";

    package = common.packageOption {
      inherit pkgs;
      description = "The nixcache package: its `keygen` makes the signing key and its `sign` signs what arrives.";
    };

    keyName = lib.mkOption {
      type = lib.types.str;
      default = "${config.networking.hostName}-1";
      defaultText = lib.literalExpression "\"\${config.networking.hostName}-1\"";
      example = "cache.example.org-1";
      description = ''
        Name of the signing key generated at first boot, as clients see it in
        `trusted-public-keys` ("NAME:BASE64"). By convention the host name and
        a number to bump when the key is rotated. It may not contain `:`, `#`
        or white space.
      '';
    };

    secretKeyFile = lib.mkOption {
      type = common.secretPathType;
      default = "${stateDir}/secret-key";
      example = "/var/lib/nixcache/secret-key-2";
      description = ''
        The secret signing key, outside the Nix store. If it does not exist,
        `nixcache-keygen.service` creates it at boot (mode 0600, root only,
        named `keyName`); it never leaves this machine. The Nix daemon signs
        what it builds with it (`nix.settings.secret-key-files`) and
        `nixcache-sign.service` signs everything else.
      '';
    };

    extraSecretKeyFiles = lib.mkOption {
      type = lib.types.listOf common.secretPathType;
      default = [ ];
      example = [ "/var/lib/nixcache/secret-key" ];
      description = ''
        More existing secret keys to sign with, besides `secretKeyFile`: the
        old key while a key is rotated, so clients that trust either key keep
        substituting. They are never generated.
      '';
    };

    publicKey = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "cache.example.org-1:OzAbNkYWs5nq8WXm3LwEtFXqlc9hNrgwJqaR4jVq2NA=";
      description = ''
        The public half of `secretKeyFile`, once known (after the first boot it
        is in `publicKeyFile`). Setting it lets other configurations read it
        from this one (for their `services.nixcache.client.publicKey`), and
        `nixcache-keygen.service` fails at boot if the secret key on disk does
        not match it, so a lost or swapped key shows up at once.
      '';
    };

    publicKeyFile = lib.mkOption {
      type = lib.types.str;
      default = "/etc/nixcache/public-key";
      readOnly = true;
      description = ''
        Where the cache's public key ("NAME:BASE64") is published for clients'
        `trusted-public-keys`, readable by every user. Written at boot from
        the secret key, so it always matches it.
      '';
    };

    gcRootsDir = lib.mkOption {
      type = lib.types.str;
      default = "/nix/var/nix/gcroots/nixcache";
      readOnly = true;
      description = ''
        Where a path is published: a root here keeps it and its closure from
        the garbage collector and has it signed at once, e.g.
        `nix-store --add-root /nix/var/nix/gcroots/nixcache/NAME --realise PATH`.
        Remove the link to stop serving the path.
      '';
    };

    user = lib.mkOption {
      type = lib.types.str;
      default = common.defaultUser;
      description = "The account clients log in as; its only login is the forced serve command.";
    };

    protocol = lib.mkOption {
      type = common.protocolType;
      default = "ssh";
      description = ''
        What the dispatcher (`nixcache serve`, every login's forced command)
        serves registered clients. `ssh`: the binary-cache channel (clients'
        `protocol = "nixcache"`) and `nix-store --serve` without `--write`
        (clients using `ssh://`): clients can query and download paths and
        nothing else. `ssh-ng` also serves `nix-daemon --stdio` (clients
        using `ssh-ng://`), which gives every client key an untrusted daemon
        connection: it may also build derivations on this machine, add
        content-addressed or validly signed paths, add GC roots and run the
        garbage collector. Use it only for clients trusted that far.
      '';
    };

    clients = lib.mkOption {
      type = lib.types.attrsOf (
        lib.types.submodule {
          options = {
            key = lib.mkOption {
              type = lib.types.str;
              example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb... root@build-01";
              description = "The client's SSH public key: the root key its Nix daemon uses (`/etc/nixcache/client-ssh-key.pub` on a NixOS client).";
            };
            comment = lib.mkOption {
              type = lib.types.str;
              default = "";
              description = "A note for admins; not used for anything.";
            };
            role = lib.mkOption {
              type = lib.types.enum [
                "pull"
                "push"
              ];
              default = "pull";
              example = "push";
              description = ''
                What the client's key may do. `pull`: query and download
                what the cache serves. `push` also uploads store paths
                through the client's substituter (`nixcache push`, or `nix
                copy --to http://127.0.0.1:PORT`; the client needs
                `services.nixcache.client.protocol = "nixcache"`): the
                cache checks each NAR against its narinfo, imports it
                through its Nix daemon only if every reference is already
                here, never replaces a valid path, signs it with the cache
                key and publishes it under `gcRootsDir`/pushed/NAME, up to
                `maxNarSize` a path. A push key still cannot run commands,
                build, delete, collect garbage or add roots anywhere else.
                A stolen push key can publish paths of its choosing, signed
                by the cache, to every client: give it only to machines you
                would let build what your clients run.
              '';
            };
          };
        }
      );
      default = { };
      example = lib.literalExpression ''
        {
          build-01.key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGb...";
          laptop-ana = { key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIK2..."; comment = "Ana"; };
        }
      '';
      description = ''
        Clients allowed to read the cache, by name (1 to 63 letters, digits,
        `.`, `_` or `-`), besides those in `registryFile`. A name or key may be
        given only once across both.
      '';
    };

    registryFile = lib.mkOption {
      type = lib.types.nullOr lib.types.path;
      default = null;
      example = lib.literalExpression "./clients.toml";
      description = ''
        A clients registry kept with `nixcache clients add|remove --registry
        FILE`, read at evaluation time with `builtins.fromTOML`. Keep it next
        to the configuration (in flakes it must be part of the flake). Removing
        a client from it and rebuilding revokes the client's key.
      '';
    };

    maxStartups = lib.mkOption {
      type = lib.types.nullOr (lib.types.strMatching "[0-9]+(:[0-9]+:[0-9]+)?");
      default = "64:30:256";
      example = null;
      description = ''
        sshd's `MaxStartups`: how many connections may be mid-handshake before
        sshd starts refusing some ("start:rate:full", or one number).
        OpenSSH's 10:30:100 is tight when a fleet of builders asks the cache
        at once; every Nix command opens its own SSH connection.

        This is global: sshd does not allow `MaxStartups` in a `Match` block,
        so it applies to every SSH login on this machine, not only the
        cache's account, and lets that many unauthenticated connections
        from anyone hold sshd's attention at once. It is only a default:
        `services.openssh.settings.MaxStartups`, if set, wins, and `null`
        leaves sshd's own.
      '';
    };

    maxSessions = lib.mkOption {
      type = lib.types.ints.positive;
      default = globalMaxSessions;
      defaultText = lib.literalMD "`services.openssh.settings.MaxSessions` if set, else 10 (OpenSSH's default)";
      example = 16;
      description = ''
        sshd's `MaxSessions` for the cache's account alone (in its `Match
        User` block): how many sessions one client connection may carry.
        Nix 2.32 and later run a client's `max-connections` as sessions of
        one SSH connection, so a client asking for more than this fails
        ("protocol mismatch"); Lix 2.93 and later open separate connections
        instead. Clients' `services.nixcache.client.maxSessions` must not
        be more than this.
      '';
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = true;
      example = false;
      description = ''
        Whether sshd's ports (`services.openssh.ports`), where clients reach
        the cache, are open in the firewall. The cache shares sshd with every
        other SSH login on this machine, so this sets the default of
        `services.openssh.openFirewall`, which opens all of sshd's ports or
        none: a definition of that option elsewhere wins.

        The default, true, is NixOS's own for sshd: enabling the cache leaves
        the firewall as sshd alone would. False keeps sshd's ports closed,
        admin logins included, e.g. to open them on one interface only with
        `networking.firewall.interfaces.<name>.allowedTCPPorts`.
      '';
    };

    publishMode = lib.mkOption {
      type = lib.types.enum [
        "all"
        "published"
      ];
      default = "all";
      example = "published";
      description = ''
        What the cache serves. `all`: every valid path in this machine's
        store, to every client. `published`: only the closures of the
        store paths that the links under `gcRootsDir` (recursively, the
        pushed paths under `gcRootsDir`/pushed included) point to;
        anything else is "not found" to every client. `nix-store --serve`
        and `nix-daemon --stdio` cannot be restricted that way, so in
        published mode only the binary-cache channel is served: clients
        need `services.nixcache.client.protocol = "nixcache"`, `protocol =
        "ssh-ng"` is refused, and so is `nix.sshServe`.
      '';
    };

    maxNarSize = lib.mkOption {
      # As the CLI reads sizes (K, M, G: powers of 1024); 0 would refuse
      # every upload.
      type = lib.types.strMatching "[1-9][0-9]*[KMG]?";
      default = "4G";
      example = "512M";
      description = ''
        The largest NAR a push client may upload, in bytes or with a K, M
        or G suffix (powers of 1024). Checked against the narinfo before
        the NAR is read, and again while it streams.
      '';
    };

    auditLog = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "/var/log/nixcache/audit.log";
      description = ''
        Where the audit log goes: one JSON line per request (client,
        key fingerprint, role, operation, store path, bytes, status,
        duration; never key material), written by
        `nixcache-publisher.service`. `null`: its standard output, the
        journal (`journalctl -u nixcache-publisher -o cat | nixcache audit
        -`). A path: that file, appended to, mode 0640, owned by the
        publisher's user (`nixcache audit FILE`). Rotate it with
        `copytruncate`, which keeps the publisher's file open and its
        appends at the end. If the publisher cannot write a record, the
        request is refused: what is not logged is not served. The path is
        letters, digits and `. _ + -` between slashes, in a directory of its
        own under /var/log, which systemd makes the publisher's
        (`LogsDirectory`, mode 0750).
      '';
    };

    signInterval = lib.mkOption {
      type = lib.types.str;
      default = "5min";
      description = ''
        Paths are signed when they are published (a root appears in
        /nix/var/nix/gcroots/nixcache) and by what the daemon builds; a
        timer signs everything else at most this long after the last run.
        Each run reads every valid path's info through the daemon, so its
        cost grows with the store.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = clients.clients != { };
        message = "services.nixcache.server is enabled but no client may read the cache: add services.nixcache.server.clients.<name>.key, or set services.nixcache.server.registryFile to the clients.toml that `nixcache clients add` writes.";
      }
      {
        assertion = builtins.match "[^:#[:space:]]+" cfg.keyName != null;
        message = "services.nixcache.server.keyName = \"${cfg.keyName}\" is not a valid key name: it must be non-empty, without ':', '#' or white space (Nix splits keys at ':', and nix.conf lists at white space).";
      }
      {
        assertion = cfg.publicKey == null || lib.hasPrefix "${cfg.keyName}:" cfg.publicKey;
        message = "services.nixcache.server.publicKey is named \"${
          lib.head (lib.splitString ":" (toString cfg.publicKey))
        }\" but keyName is \"${cfg.keyName}\": set publicKey to the content of ${cfg.publicKeyFile}.";
      }
      # A word of sshd_config's Match line and of the publisher's command
      # line: a comma or pattern would match other users, a line break add
      # settings ahead of those that confine the account.
      {
        assertion = builtins.match "[a-z_][a-z0-9_.-]*" cfg.user != null;
        message = "services.nixcache.server.user = \"${cfg.user}\" is not a user name: use lowercase letters, digits, _ . -";
      }
      {
        assertion = !(config.nix.sshServe.enable or false);
        message = "services.nixcache.server replaces nix.sshServe (both configure the ${cfg.user} account and its forced command): set nix.sshServe.enable = false.";
      }
      # nix-store --serve and nix-daemon --stdio answer for the whole store:
      # published mode could hide nothing from them.
      {
        assertion = !(cfg.publishMode == "published" && cfg.protocol == "ssh-ng");
        message = "services.nixcache.server.publishMode = \"published\" with protocol = \"ssh-ng\": nix-daemon --stdio serves every client the whole store (and builds, imports and roots), which published mode cannot restrict. Set protocol = \"ssh\" (published mode serves only the binary-cache channel: clients need services.nixcache.client.protocol = \"nixcache\"), or publishMode = \"all\".";
      }
      {
        assertion = !(cfg.publishMode == "published" && (config.nix.sshServe.enable or false));
        message = "services.nixcache.server.publishMode = \"published\" with nix.sshServe.enable: nix.sshServe gives its keys nix-store --serve on the whole store, which published mode cannot restrict. Set nix.sshServe.enable = false.";
      }
      {
        assertion = untrustedMaySign;
        message = "services.nixcache.server signs as an unprivileged user, which Nix allows from 2.17 on; nix.package is Nix ${config.nix.package.version or "(unknown)"}: use Nix 2.17 or later, or Lix.";
      }
    ]
    ++ map (message: {
      assertion = false;
      inherit message;
    }) (
      keyFileProblems "services.nixcache.server.secretKeyFile" cfg.secretKeyFile
      ++ lib.concatMap (keyFileProblems "services.nixcache.server.extraSecretKeyFiles") cfg.extraSecretKeyFiles
      ++ clients.problems
      ++ auditLogProblems
    );

    warnings =
      lib.optional (cfg.protocol == "ssh-ng") ''
        services.nixcache.server.protocol = "ssh-ng" serves every client key through nix-daemon --stdio as an untrusted user: clients can build on this machine, import paths, add GC roots and collect garbage. Use "ssh" for a read-only cache.
      ''
      ++ lib.optional (cfg.protocol == "ssh-ng" && pushClients != { }) ''
        services.nixcache.server.clients ${lib.concatStringsSep ", " (lib.attrNames pushClients)} have role "push", but protocol = "ssh-ng" already lets every client key, pull keys included, write to this machine through nix-daemon --stdio (content-addressed and validly signed paths, GC roots, builds): the role limits the binary-cache channel's uploads alone. Use protocol = "ssh" to make pull keys read-only.
      '';

    environment.systemPackages = [ cfg.package ];

    # The CLI on this machine uses the module's key without flags.
    environment.etc."nixcache/config.toml".text = ''
      # Written by the nixcache NixOS module.
      key-name = ${builtins.toJSON cfg.keyName}
      secret-key-file = ${builtins.toJSON (lib.head secretKeyFiles)}
      public-key-file = ${builtins.toJSON publicKeyState}
    '';
    environment.etc."nixcache/public-key".source = publicKeyState;
    environment.etc."nixcache/clients.toml".source = registryStoreFile;

    nix.settings.secret-key-files = secretKeyFiles;

    systemd.services.nixcache-keygen = {
      description = "Create the nixcache signing key if it is missing, and check every key";
      documentation = [ "https://github.com/nixcache/nixcache#nixos" ];
      wantedBy = [
        "multi-user.target"
        "nix-daemon.service"
      ];
      before = [
        "nix-daemon.service"
        "nixcache-sign.service"
      ];
      path = [ cfg.package ];
      environment = {
        NAME = cfg.keyName;
        SECRET = lib.head secretKeyFiles;
        PUBLIC = publicKeyState;
        EXPECTED = toString cfg.publicKey;
      };
      script = ''
        ${common.exposedKeyCheck}
        hint=${lib.escapeShellArg "then systemctl restart nixcache-keygen.service. If someone may have, treat the key as leaked and rotate it (https://github.com/nixcache/nixcache/blob/main/docs/nixos.md#rotating-the-signing-key)."}
        if [ ! -e "$SECRET" ]; then
          # O_EXCL and mode 0600; prints only the public key.
          nixcache keygen --name "$NAME" --secret-key-file "$SECRET"
        fi
        refuse_exposed_key "$SECRET" services.nixcache.server.secretKeyFile "$hint"
        for f in ${lib.escapeShellArgs (lib.tail secretKeyFiles)}; do
          if [ ! -e "$f" ]; then
            echo "extra secret key file $f does not exist: copy the old key there, or remove it from services.nixcache.server.extraSecretKeyFiles" >&2
            exit 1
          fi
          refuse_exposed_key "$f" services.nixcache.server.extraSecretKeyFiles "$hint"
        done
        # Published from the secret key itself, so it always matches it.
        nixcache key public --secret-key-file "$SECRET" > "$PUBLIC.tmp"
        chmod 0644 "$PUBLIC.tmp"
        mv "$PUBLIC.tmp" "$PUBLIC"
        if [ -n "$EXPECTED" ] && [ "$(cat "$PUBLIC")" != "$EXPECTED" ]; then
          echo "the key in $SECRET is $(cat "$PUBLIC"), not services.nixcache.server.publicKey = $EXPECTED" >&2
          exit 1
        fi
      '';
      serviceConfig = common.confinedRoot // {
        Type = "oneshot";
        RemainAfterExit = true;
        StateDirectory = "nixcache";
        StateDirectoryMode = "0755";
        # Where a missing key is made; created with full privileges first, as
        # a directory must exist to be made writable.
        ReadWritePaths = [ secretKeyDir ];
        ExecStartPre = [ "+${pkgs.coreutils}/bin/mkdir -p -- ${lib.escapeShellArg secretKeyDir}" ];
        # A new key (first boot, rotation) signs everything at once; a run
        # already going may have started with the old keys. From outside the
        # confinement, which has no way to reach systemd.
        ExecStartPost = [ "+${config.systemd.package}/bin/systemctl restart --no-block nixcache-sign.service" ];
      };
    };

    # Signs every valid path that lacks a signature by each key: paths copied
    # in by an admin or CI (`nix copy`, `nix-store --import`), substituted
    # from elsewhere, or everything at once after a key is added. What the
    # daemon builds is signed by secret-key-files already.
    systemd.services.nixcache-sign = {
      description = "Sign the Nix store's paths with the nixcache keys";
      documentation = [ "https://github.com/nixcache/nixcache#nixos" ];
      after = [
        "nixcache-keygen.service"
        "nix-daemon.socket"
      ];
      # Not without the keys checked: a key others could read is refused
      # there, and nothing signs with it.
      requires = [
        "nixcache-keygen.service"
        "nix-daemon.socket"
      ];
      serviceConfig = {
        Type = "oneshot";
        ExecStart = lib.imap0 (
          i: _: "${lib.getExe cfg.package} sign --all --secret-key-file %d/key-${toString i}"
        ) secretKeyFiles;
        # The keys reach the service as credentials: root reads them, the
        # service sees a private copy.
        LoadCredential = lib.imap0 (i: f: "key-${toString i}:${f}") secretKeyFiles;

        # An unprivileged, untrusted daemon user, which reads nothing but
        # its credentials and talks to the daemon's socket alone.
        DynamicUser = true;
        UMask = "0077";
      }
      // common.confinedDaemonClient;
    };

    # Publishing a path (a root in gcRootsDir) signs it and its closure at
    # once. The store database cannot be the trigger: every daemon
    # connection opens files there for writing, reads included, so the
    # signer would run for each client and for its own connection.
    systemd.paths.nixcache-sign = {
      description = "Sign Nix store paths as they are published";
      wantedBy = [ "multi-user.target" ];
      pathConfig = {
        PathChanged = cfg.gcRootsDir;
        Unit = "nixcache-sign.service";
      };
    };
    # Paths that arrive without being published (or while a run is going).
    systemd.timers.nixcache-sign = {
      description = "Sign Nix store paths the path unit did not see";
      wantedBy = [ "timers.target" ];
      timerConfig = {
        OnBootSec = "1min";
        OnUnitInactiveSec = cfg.signInterval;
      };
    };

    # Uploads from push clients, and the audit log. serve (the cache
    # account) reaches the publisher through this socket alone; the
    # publisher checks again that the peer is that account or root.
    systemd.sockets.nixcache-publisher = {
      description = "The nixcache publisher's socket, for the cache account's serve";
      documentation = [ "https://github.com/nixcache/nixcache/blob/main/docs/uploads.md" ];
      wantedBy = [ "sockets.target" ];
      listenStreams = [ publisherSocket ];
      socketConfig = {
        SocketUser = "root";
        SocketGroup = config.users.users.${cfg.user}.group;
        SocketMode = "0660";
        RemoveOnStop = true;
      };
    };
    # Started by the first connection. It holds the cache key (as a
    # credential, like the signer), checks each upload, signs it and
    # imports it through the daemon as an untrusted user: the daemon takes
    # an input-addressed path from such a user only with a signature by a
    # key it trusts, and it trusts the public half of every
    # secret-key-files key, so neither serve nor the publisher is a trusted
    # Nix user. A static user, so that the roots it makes keep an owner.
    systemd.services.nixcache-publisher = {
      description = "Import, sign and publish what nixcache push clients upload, and write the audit log";
      documentation = [ "https://github.com/nixcache/nixcache/blob/main/docs/uploads.md" ];
      # Not without the keys checked: a key others could read is refused
      # there, and nothing signs with it.
      requires = [
        "nixcache-publisher.socket"
        "nixcache-keygen.service"
        "nix-daemon.socket"
      ];
      after = [
        "nixcache-publisher.socket"
        "nixcache-keygen.service"
        "nix-daemon.socket"
      ];
      serviceConfig = {
        ExecStart = lib.concatStringsSep " " (
          [
            "${lib.getExe cfg.package} publisher"
            "--listen ${publisherSocket}"
            "--registry ${registryPath}"
            "--secret-key-file %d/key"
            "--roots ${cfg.gcRootsDir}"
            "--max-nar-size ${cfg.maxNarSize}"
            "--allow-user ${cfg.user}"
          ]
          ++ lib.optional (cfg.auditLog != null) "--audit-log ${cfg.auditLog}"
        );
        # The audit log's directory is made the publisher's by systemd,
        # which does not follow a symlink planted there; the publisher makes
        # the file (0640, not through a symlink).
        LogsDirectory = lib.mkIf (cfg.auditLog != null) auditLogsDirectory;
        LogsDirectoryMode = lib.mkIf (cfg.auditLog != null) "0750";
        # The key: root reads it, the service sees a private copy.
        LoadCredential = [ "key:${lib.head secretKeyFiles}" ];

        # An unprivileged, untrusted daemon user of its own (the roots it
        # makes keep an owner), which reads the registry and writes the
        # pushed roots (and the audit log's directory) alone; its socket
        # comes from systemd, the daemon's is a Unix socket.
        User = publisherUser;
        Group = publisherUser;
        ReadWritePaths = [ pushedDir ];
        # Not 0077: serve, as the cache account, reads the per-client root
        # directories in published mode.
        UMask = "0022";
      }
      // common.confinedDaemonClient;
    };

    users.users.${publisherUser} = {
      description = "nixcache publisher: imports, signs and roots pushed paths";
      isSystemUser = true;
      group = publisherUser;
    };
    users.groups.${publisherUser} = { };

    # What the cache serves must be alive to Nix's garbage collector: a path
    # pushed here is kept by a root in this directory (see the README); the
    # publisher roots uploads under pushed/CLIENT.
    systemd.tmpfiles.rules = [
      "d ${cfg.gcRootsDir} 0755 root root -"
      "d ${pushedDir} 0755 ${publisherUser} ${publisherUser} -"
    ];

    users.users.${cfg.user} = {
      description = "nixcache clients";
      isSystemUser = true;
      group = cfg.user;
      # The forced command runs through the login shell.
      useDefaultShell = true;
      # Without sshd's Match block (ExposeAuthInfo), each line still names
      # its client to the dispatcher.
      openssh.authorizedKeys.keys = registry.authorizedKeys {
        inherit (clients) clients;
        command = name: "${serveCommand} --client ${name}";
      };
    };
    users.groups.${cfg.user} = { };

    services.openssh = {
      enable = true;
      # sshd opens its ports whenever it is enabled unless this is false.
      openFirewall = lib.mkDefault cfg.openFirewall;
      settings = lib.mkIf (cfg.maxStartups != null) { MaxStartups = lib.mkDefault cfg.maxStartups; };
      # As nixpkgs' nix.sshServe, and again in every authorized_keys line
      # (restrict, command=): the account can run the dispatcher and nothing
      # else, however a key got there. ExposeAuthInfo tells the dispatcher
      # which key logged in (SSH_USER_AUTH), so a key that is not in the
      # registry gets nothing. Last in sshd_config, since nothing global may
      # follow a Match block.
      extraConfig = lib.mkAfter ''
        Match User ${cfg.user}
          AllowAgentForwarding no
          AllowTcpForwarding no
          AllowStreamLocalForwarding no
          PermitTTY no
          PermitTunnel no
          PermitUserRC no
          X11Forwarding no
          AuthenticationMethods publickey
          MaxSessions ${toString cfg.maxSessions}
          ExposeAuthInfo yes
          ForceCommand ${serveCommand}
        Match All
      '';
    };

  };
}
