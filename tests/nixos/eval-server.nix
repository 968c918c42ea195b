# services.nixcache.server, evaluated (see ./eval.nix).
{
  lib,
  evalModules,
  evalConfig,
  expect,
  failedAssertions,
  fakePackage,
  ...
}:
let
  clientKey = lib.fileContents ./test-keys/client_ed25519.pub;
  clientKeyBare = lib.concatStringsSep " " (lib.take 2 (lib.splitString " " clientKey));
  build02Key = lib.concatStringsSep " " (
    lib.take 2 (lib.splitString " " (lib.fileContents ./test-keys/build-02_ed25519.pub))
  );
  nix = "/nix/store/00000000000000000000000000000000-nix-2.34.6";
  # Every protocol goes through the dispatcher; ssh-ng also lets clients
  # run nix-daemon --stdio.
  nixcache = "/nix/store/00000000000000000000000000000000-nixcache-0.1.0/bin/nixcache";
  # Every request is relayed to (and audited by) the publisher.
  dispatcherIn =
    mode: "${nixcache} serve --registry /etc/nixcache/clients.toml --nix-store ${nix}/bin/nix-store --nix-daemon ${nix}/bin/nix-daemon --publisher /run/nixcache/publisher.sock --publish-mode ${mode} --roots /nix/var/nix/gcroots/nixcache";
  dispatcher = dispatcherIn "all";
  dispatcherNg = "${dispatcher} --allow-ssh-ng";
  line = command: key: name: "restrict,command=\"${command} --client ${name}\" ${key} nixcache:${name}";
  # A push client's line says so to serve as well.
  pushLine = command: key: name: "restrict,command=\"${command} --client ${name} --role push\" ${key} nixcache:${name}";
  matchBlock = config: lib.last (lib.splitString "Match User nix-ssh\n" config.services.openssh.extraConfig);
  registryText = config: config.environment.etc."nixcache/clients.toml".source.text;
  # The module's first lines instead of the CLI's one.
  moduleHeader = ''
    # Written by the nixcache NixOS module from services.nixcache.server.clients
    # and registryFile: the clients `nixcache serve` lets in. Change those.
  '';
  asWritten = file: moduleHeader + lib.concatStringsSep "\n" (lib.tail (lib.splitString "\n" (builtins.readFile file)));

  server =
    settings:
    evalConfig [
      {
        networking.hostName = "cache";
        services.nixcache.server = {
          enable = true;
        }
        // settings;
      }
    ];
  withClient = settings: server ({ clients.laptop.key = clientKey; } // settings);

  minimal = withClient { };
  sign = minimal.systemd.services.nixcache-sign;
  keygen = minimal.systemd.services.nixcache-keygen;
  withSshdSettings =
    settings: sshd:
    evalConfig [
      {
        services.nixcache.server = {
          enable = true;
          clients.a.key = clientKey;
        }
        // settings;
        services.openssh.settings = sshd;
      }
    ];
in
{
  "server: imported but not enabled changes nothing" =
    let
      config = evalConfig [ ];
    in
    expect.eq "users" (lib.attrNames config.users.users) [ ]
    ++ expect.eq "sshd enabled" config.services.openssh.enable false
    ++ expect.eq "nix.settings.secret-key-files" (config.nix.settings.secret-key-files or null) null
    ++ expect.eq "units" (lib.attrNames config.systemd.services) [ ]
    ++ expect.eq "/etc" (lib.attrNames config.environment.etc) [ ];

  "server: the key is made at boot and wired into nix.conf" =
    expect.accepted minimal
    ++ expect.eq "secret-key-files" minimal.nix.settings.secret-key-files [ "/var/lib/nixcache/secret-key" ]
    ++ expect.eq "key unit type" minimal.systemd.services.nixcache-keygen.serviceConfig.Type "oneshot"
    ++ expect.true "key unit runs at boot, before the daemon" (
      lib.elem "multi-user.target" minimal.systemd.services.nixcache-keygen.wantedBy
      && lib.elem "nix-daemon.service" minimal.systemd.services.nixcache-keygen.before
    )
    ++ expect.true "key unit names the key cache-1" (
      minimal.systemd.services.nixcache-keygen.environment.NAME == "cache-1"
    )
    ++ expect.true "key unit creates the key only when absent" (
      lib.hasInfix "if [ ! -e \"$SECRET\" ]" minimal.systemd.services.nixcache-keygen.script
    )
    ++ expect.eq "key unit umask" minimal.systemd.services.nixcache-keygen.serviceConfig.UMask "0077"
    ++ expect.eq "published public key" minimal.environment.etc."nixcache/public-key".source "/var/lib/nixcache/public-key"
    ++ expect.eq "no substituter added" minimal.nix.settings.substituters [ "https://cache.nixos.org/" ]
    ++ expect.true "the CLI config names the key" (
      lib.hasInfix "secret-key-file = \"/var/lib/nixcache/secret-key\"" minimal.environment.etc."nixcache/config.toml".text
    );

  "server: every login goes through the dispatcher, which knows each key's client" =
    let
      user = minimal.users.users.nix-ssh;
      block = matchBlock minimal;
    in
    expect.eq "authorized keys name their client" user.openssh.authorizedKeys.keys [
      (line dispatcher clientKeyBare "laptop")
    ]
    ++ expect.true "a system user" (user.isSystemUser && user.group == "nix-ssh")
    ++ expect.true "its group exists" (minimal.users.groups ? nix-ssh)
    ++ expect.true "sshd forces the dispatcher, read-only, and tells it which key logged in" (
      lib.hasInfix "\n  ForceCommand ${dispatcher}\n" block
      && lib.hasInfix "\n  ExposeAuthInfo yes\n" block
      && !lib.hasInfix "--write" block
      && !lib.hasInfix "--allow-ssh-ng" block
      && lib.hasInfix "PermitTTY no" block
      && lib.hasInfix "AllowTcpForwarding no" block
    )
    ++ expect.true "the Match block is closed" (lib.hasSuffix "Match All\n" minimal.services.openssh.extraConfig)
    ++ expect.eq "sshd's port is open, as NixOS opens it" minimal.networking.firewall.allowedTCPPorts [ 22 ]
    ++ expect.eq "no warnings" minimal.warnings [ ];

  "server: openFirewall opens sshd's ports" =
    let
      config = evalConfig [
        {
          services.nixcache.server = {
            enable = true;
            clients.a.key = clientKey;
            openFirewall = true;
          };
          services.openssh.ports = [ 2222 ];
        }
      ];
    in
    expect.eq "allowedTCPPorts" config.networking.firewall.allowedTCPPorts [ 2222 ];

  # MaxStartups is global in sshd_config(5) (not allowed in a Match block):
  # it throttles every login, so the admin's own value always wins.
  "server: MaxStartups is sshd's global setting: a default the admin can override or drop" =
    let
      option = (evalModules [ ]).options.services.nixcache.server.maxStartups;
      own = withSshdSettings { } { MaxStartups = "10:30:60"; };
      ownInt = withSshdSettings { } { MaxStartups = 20; };
      dropped = withClient { maxStartups = null; };
    in
    expect.eq "by default" minimal.services.openssh.settings.MaxStartups "64:30:256"
    ++ expect.eq "set through maxStartups" (withClient { maxStartups = "100"; })
      .services.openssh.settings.MaxStartups
      "100"
    ++ expect.eq "the admin's own value wins" (builtins.tryEval own.services.openssh.settings.MaxStartups) {
      success = true;
      value = "10:30:60";
    }
    ++ expect.eq "an integer too" (builtins.tryEval ownInt.services.openssh.settings.MaxStartups) {
      success = true;
      value = 20;
    }
    ++ expect.true "maxStartups = null leaves sshd's default" (
      (builtins.tryEval (!dropped.services.openssh.settings ? MaxStartups)).value
    )
    ++ expect.throws "maxStartups = \"lots\" is refused" (withClient { maxStartups = "lots"; })
      .services.openssh.settings.MaxStartups
    ++ expect.true "the description says it applies to every SSH login" (
      lib.hasInfix "every SSH login" option.description && lib.hasInfix "not only" option.description
    );

  "server: sshd's MaxSessions for the cache's account, OpenSSH's 10 unless raised" =
    let
      block = config: config.services.openssh.extraConfig;
      raised = withClient { maxSessions = 16; };
      global = evalConfig [
        {
          services.nixcache.server = {
            enable = true;
            clients.a.key = clientKey;
          };
          services.openssh.settings.MaxSessions = 20;
        }
      ];
      globalZero = evalConfig [
        {
          services.nixcache.server = {
            enable = true;
            clients.a.key = clientKey;
          };
          services.openssh.settings.MaxSessions = 0;
        }
      ];
    in
    expect.true "MaxSessions 10 in the Match block" (
      lib.hasInfix "Match User nix-ssh\n" (block minimal) && lib.hasInfix "\n  MaxSessions 10\n" (block minimal)
    )
    ++ expect.true "maxSessions = 16" (lib.hasInfix "\n  MaxSessions 16\n" (block raised))
    ++ expect.eq "a global MaxSessions is kept for the account" global.services.nixcache.server.maxSessions 20
    ++ expect.true "MaxSessions 20 in the Match block" (lib.hasInfix "\n  MaxSessions 20\n" (block global))
    ++ expect.eq "not a global 0" globalZero.services.nixcache.server.maxSessions 10;

  # sshd.nix opens services.openssh.ports whenever sshd is enabled, unless
  # services.openssh.openFirewall is false.
  "server: openFirewall = false keeps sshd's port closed" =
    let
      closed = withClient { openFirewall = false; };
    in
    expect.accepted closed
    ++ expect.eq "services.openssh.openFirewall" closed.services.openssh.openFirewall false
    ++ expect.true "22 is not in allowedTCPPorts ${builtins.toJSON closed.networking.firewall.allowedTCPPorts}" (
      !lib.elem 22 closed.networking.firewall.allowedTCPPorts
    );

  "server: an explicit services.openssh.openFirewall wins over openFirewall" =
    let
      withSshd =
        settings: sshdOpen:
        evalConfig [
          {
            services.nixcache.server = {
              enable = true;
              clients.a.key = clientKey;
            }
            // settings;
            services.openssh.openFirewall = sshdOpen;
          }
        ];
    in
    expect.eq "server false, sshd true: open" (withSshd { openFirewall = false; } true)
      .networking.firewall.allowedTCPPorts
      [ 22 ]
    ++ expect.eq "server true, sshd false: closed" (withSshd { openFirewall = true; } false)
      .networking.firewall.allowedTCPPorts
      [ ];

  "server: the registry file and inline clients merge, in name order" =
    let
      config = server {
        registryFile = ./registry.toml;
        clients.a-laptop.key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkyTU8ZFNjVcZtJ1Yq5sTRo0Y2m7lJ4vVv3+4Yb6R0T extra comment";
      };
    in
    expect.accepted config
    ++ expect.eq "authorized keys" config.users.users.nix-ssh.openssh.authorizedKeys.keys [
      (line dispatcher "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkyTU8ZFNjVcZtJ1Yq5sTRo0Y2m7lJ4vVv3+4Yb6R0T" "a-laptop")
      (line dispatcher build02Key "build-02")
      (line dispatcher clientKeyBare "client")
    ]
    ++ expect.eq "the dispatcher's registry" (registryText config) (
      moduleHeader
      + ''
        version = 1

        [clients.a-laptop]
        key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkyTU8ZFNjVcZtJ1Yq5sTRo0Y2m7lJ4vVv3+4Yb6R0T"
      ''
      + lib.concatStringsSep "\n" (lib.drop 2 (lib.splitString "\n" (builtins.readFile ./registry.toml)))
    );

  # What the dispatcher reads is what `nixcache clients` writes (the Go test
  # in ./module_test.go compares the two for any registry), and the CLI
  # itself reads it when the file is built: a registry it would refuse at
  # every login fails the build instead.
  "server: the dispatcher's registry is the CLI's, checked by the CLI at build time" =
    let
      config = server { registryFile = ./registry.toml; };
      file = config.environment.etc."nixcache/clients.toml".source;
    in
    expect.eq "text" (registryText config) (asWritten ./registry.toml)
    ++ expect.eq "revoked" (registryText (server { registryFile = ./registry-revoked.toml; })) (
      asWritten ./registry-revoked.toml
    )
    ++ expect.eq "checked" file.checkPhase ''
      /nix/store/00000000000000000000000000000000-nixcache-0.1.0/bin/nixcache clients list --registry "$target" > /dev/null
    '';

  "server: refuses a comment the CLI would refuse at every login" =
    let
      commented =
        comment:
        server {
          clients.laptop = {
            key = clientKey;
            inherit comment;
          };
        };
    in
    expect.refused (commented "Ana\nrm -rf") [ "the comment of client \"laptop\" has a control character" ]
    ++ expect.refused (commented "a\tb") [ "control character" ]
    ++ expect.accepted (commented "Ana's \"laptop\" \\ ünïcode");

  "server: revoking in the registry removes the key" =
    let
      config = server { registryFile = ./registry-revoked.toml; };
    in
    expect.eq "authorized keys" config.users.users.nix-ssh.openssh.authorizedKeys.keys [
      (line dispatcher build02Key "build-02")
    ];

  "server: ssh-ng lets the dispatcher serve nix-daemon --stdio, with a warning" =
    let
      config = withClient { protocol = "ssh-ng"; };
    in
    expect.true "ForceCommand" (lib.hasInfix "\n  ForceCommand ${dispatcherNg}\n" (matchBlock config))
    ++ expect.eq "authorized keys" config.users.users.nix-ssh.openssh.authorizedKeys.keys [
      (line dispatcherNg clientKeyBare "laptop")
    ]
    ++ expect.true "a warning says what clients may do" (
      lib.any (w: lib.hasInfix "can build on this machine" w) config.warnings
    );

  "server: arriving paths are signed by a hardened, unprivileged unit" =
    expect.eq "ExecStart" sign.serviceConfig.ExecStart [
      "/nix/store/00000000000000000000000000000000-nixcache-0.1.0/bin/nixcache sign --all --secret-key-file %d/key-0"
    ]
    ++ expect.eq "LoadCredential" sign.serviceConfig.LoadCredential [ "key-0:/var/lib/nixcache/secret-key" ]
    ++ expect.true "no privileges" (
      sign.serviceConfig.DynamicUser
      && sign.serviceConfig.CapabilityBoundingSet == ""
      && sign.serviceConfig.NoNewPrivileges
      && sign.serviceConfig.ProtectSystem == "strict"
      && sign.serviceConfig.PrivateNetwork
      && sign.serviceConfig.RestrictAddressFamilies == [ "AF_UNIX" ]
    )
    ++ expect.eq "path unit" minimal.systemd.paths.nixcache-sign.pathConfig {
      PathChanged = "/nix/var/nix/gcroots/nixcache";
      Unit = "nixcache-sign.service";
    }
    ++ expect.eq "timer" minimal.systemd.timers.nixcache-sign.timerConfig {
      OnBootSec = "1min";
      OnUnitInactiveSec = "5min";
    }
    ++ expect.true "a new key signs everything, from outside the key unit's confinement" (
      keygen.serviceConfig.ExecStartPost or null == [
        "+/nix/store/00000000000000000000000000000000-systemd-258.2/bin/systemctl restart --no-block nixcache-sign.service"
      ]
      && !lib.hasInfix "systemctl restart --no-block" keygen.script
    );

  "server: the key unit is confined, writing only its state and the key's directory" =
    expect.confined "nixcache-keygen" keygen.serviceConfig
    ++ expect.eq "state directory" keygen.serviceConfig.StateDirectory "nixcache"
    ++ expect.eq "writable" (keygen.serviceConfig.ReadWritePaths or null) [ "/var/lib/nixcache" ]
    ++ (
      let
        config = withClient { secretKeyFile = "/root/keys/cache.secret"; };
        unit = config.systemd.services.nixcache-keygen.serviceConfig;
      in
      expect.eq "another key directory is writable" (unit.ReadWritePaths or null) [ "/root/keys" ]
      ++ expect.eq "and made before the confined script runs" (unit.ExecStartPre or null) [
        "+/nix/store/00000000000000000000000000000000-coreutils-9.7/bin/mkdir -p -- /root/keys"
      ]
    );

  # The script itself runs in scripts/eval-modules.sh, on real files.
  "server: a secret key others can read or own stops the key unit, and the signer with it" =
    expect.true "the key unit checks every key before publishing" (
      lib.hasInfix "refuse_exposed_key" keygen.script
      && lib.hasInfix "8#077" keygen.script
    )
    ++ expect.true "the signer needs the key unit, not only wants it" (
      lib.elem "nixcache-keygen.service" sign.requires && lib.elem "nixcache-keygen.service" sign.after
    );

  "server: refuses a key file in a temporary directory" =
    expect.refused (withClient { secretKeyFile = "/tmp/cache.secret"; }) [
      "secretKeyFile = \"/tmp/cache.secret\""
      "temporary"
    ]
    ++ expect.refused (withClient { extraSecretKeyFiles = [ "/var/tmp/old.secret" ]; }) [
      "extraSecretKeyFiles"
      "temporary"
    ];

  "server: what it serves is kept from the garbage collector by its roots directory" =
    expect.true "roots directory" (lib.elem "d /nix/var/nix/gcroots/nixcache 0755 root root -" minimal.systemd.tmpfiles.rules);

  "server: rotation signs with the old and the new key" =
    let
      config = withClient {
        keyName = "cache-2";
        secretKeyFile = "/var/lib/nixcache/secret-key-2";
        extraSecretKeyFiles = [ "/var/lib/nixcache/secret-key" ];
        publicKey = "cache-2:iHyL9qvGwn8WeQL/A9ZZOhmJQBdlomPJ+rD2QBQQH+Q=";
      };
      s = config.systemd.services.nixcache-sign.serviceConfig;
    in
    expect.accepted config
    ++ expect.eq "secret-key-files" config.nix.settings.secret-key-files [
      "/var/lib/nixcache/secret-key-2"
      "/var/lib/nixcache/secret-key"
    ]
    ++ expect.eq "LoadCredential" s.LoadCredential [
      "key-0:/var/lib/nixcache/secret-key-2"
      "key-1:/var/lib/nixcache/secret-key"
    ]
    ++ expect.eq "runs" (builtins.length s.ExecStart) 2
    ++ expect.eq "expected public key checked at boot" config.systemd.services.nixcache-keygen.environment.EXPECTED "cache-2:iHyL9qvGwn8WeQL/A9ZZOhmJQBdlomPJ+rD2QBQQH+Q=";

  "server: refuses no clients" = expect.refused (server { }) [ "no client may read the cache" "registryFile" ];

  "server: refuses an invalid key name" = expect.refused (withClient { keyName = "cache:1"; }) [
    "keyName = \"cache:1\" is not a valid key name"
  ];

  "server: refuses a key file in the store" = expect.refused (withClient {
    secretKeyFile = "/nix/store/00000000000000000000000000000000-key";
  }) [ "is inside the Nix store" ];

  "server: refuses an extra key file in the store" = expect.refused (withClient {
    extraSecretKeyFiles = [ "/nix/store/00000000000000000000000000000000-old-key" ];
  }) [ "extraSecretKeyFiles" "is inside the Nix store" ];

  "server: refuses a path literal key file, without copying it into the store" =
    let
      config = withClient { secretKeyFile = ./test-keys/signing-2.secret; };
      written = builtins.head config.nix.settings.secret-key-files;
    in
    expect.refused config [ "is the path literal" "copied into the Nix store" ]
    ++ expect.true "nix.conf would name the file itself, not a store copy" (
      !lib.hasPrefix builtins.storeDir written && !builtins.hasContext written
    );

  "server: refuses a relative key file" = expect.refused (withClient { secretKeyFile = "secret-key"; }) [
    "must be an absolute path"
  ];

  "server: refuses a public key of another name" = expect.refused (withClient {
    publicKey = "other-1:iHyL9qvGwn8WeQL/A9ZZOhmJQBdlomPJ+rD2QBQQH+Q=";
  }) [ "is named \"other-1\" but keyName is \"cache-1\"" ];

  "server: refuses a key registered twice" = expect.refused (server {
    registryFile = ./registry.toml;
    clients.again.key = clientKey;
  }) [ "the same key is given 2 times" "client \"again\"" "client \"client\"" ];

  "server: refuses a name given twice" = expect.refused (server {
    registryFile = ./registry.toml;
    clients.client.key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkyTU8ZFNjVcZtJ1Yq5sTRo0Y2m7lJ4vVv3+4Yb6R0T";
  }) [ "a client name is given 2 times" ];

  "server: refuses a bad client name and a key with options" =
    let
      config = server {
        clients."bad name".key = clientKey;
        clients.ok.key = "command=\"/bin/sh\" ${clientKey}";
      };
    in
    expect.refused config [ "client name \"bad name\" is not allowed" ]
    ++ expect.refused config [ "the key of client \"ok\" is not one OpenSSH public key" ];

  # Someone who controls what an admin pastes: the account's name is a word
  # of sshd_config's Match line (a comma or pattern would match other users,
  # a line break would add settings to the block, ahead of the ones that
  # confine the account, and sshd keeps the first) and of the publisher's
  # command line.
  "server: refuses an account name that is no user name" =
    lib.concatMap (
      user:
      expect.refused (withClient { inherit user; }) [ "services.nixcache.server.user" "is not a user name" ]
    ) [
      "nix-ssh\n  PermitTTY yes"
      "nix-ssh,root"
      "*"
      "nix ssh"
      "nix-ssh%i"
    ];

  "server: refuses nix.sshServe alongside" =
    expect.refused
      (evalConfig [
        {
          services.nixcache.server = {
            enable = true;
            clients.a.key = clientKey;
          };
          nix.sshServe.enable = true;
        }
      ])
      [ "set nix.sshServe.enable = false" ];

  # Roles, uploads, published mode and the audit log (docs/uploads.md).

  "server: an existing configuration keeps its meaning: every client pulls, the whole store is served" =
    let
      publisher = minimal.systemd.services.nixcache-publisher.serviceConfig;
    in
    expect.accepted minimal
    ++ expect.eq "publishMode" minimal.services.nixcache.server.publishMode "all"
    ++ expect.eq "role" minimal.services.nixcache.server.clients.laptop.role "pull"
    ++ expect.eq "no --role in authorized_keys" minimal.users.users.nix-ssh.openssh.authorizedKeys.keys [
      (line dispatcher clientKeyBare "laptop")
    ]
    ++ expect.true "no role in the dispatcher's registry, which stays version 1" (
      !lib.hasInfix "role" (registryText minimal) && lib.hasInfix "\nversion = 1\n" (registryText minimal)
    )
    ++ expect.true "ForceCommand serves everything" (
      lib.hasInfix "\n  ForceCommand ${dispatcher}\n" (matchBlock minimal)
    )
    ++ expect.true "uploads up to 4G, audit to the journal" (
      lib.hasInfix " --max-nar-size 4G " publisher.ExecStart && !lib.hasInfix "--audit-log" publisher.ExecStart
    )
    ++ expect.eq "no warnings" minimal.warnings [ ];

  "server: a push client's authorized_keys line and registry entry say push" =
    let
      config = server {
        clients.laptop.key = clientKey;
        clients.ci = {
          key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkyTU8ZFNjVcZtJ1Yq5sTRo0Y2m7lJ4vVv3+4Yb6R0T";
          role = "push";
        };
      };
    in
    expect.accepted config
    ++ expect.eq "authorized keys" config.users.users.nix-ssh.openssh.authorizedKeys.keys [
      (pushLine dispatcher "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkyTU8ZFNjVcZtJ1Yq5sTRo0Y2m7lJ4vVv3+4Yb6R0T" "ci")
      (line dispatcher clientKeyBare "laptop")
    ]
    ++ expect.true "the registry says push for ci alone" (
      lib.hasInfix "[clients.ci]\nkey = \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkyTU8ZFNjVcZtJ1Yq5sTRo0Y2m7lJ4vVv3+4Yb6R0T\"\nrole = \"push\"\n" (registryText config)
      && lib.length (lib.filter (l: l == "role = \"push\"") (lib.splitString "\n" (registryText config))) == 1
    )
    ++ expect.throws "an unknown role is refused" (withClient { clients.laptop.role = "admin"; })
      .users.users.nix-ssh.openssh.authorizedKeys.keys;

  "server: the publisher listens on a socket only the cache account and root reach" =
    let
      socket = minimal.systemd.sockets.nixcache-publisher;
    in
    expect.eq "ListenStream" socket.listenStreams [ "/run/nixcache/publisher.sock" ]
    ++ expect.eq "socketConfig" socket.socketConfig {
      SocketUser = "root";
      SocketGroup = "nix-ssh";
      SocketMode = "0660";
      RemoveOnStop = true;
    }
    ++ expect.true "listening from boot" (lib.elem "sockets.target" socket.wantedBy)
    ++ expect.true "serve is told where it is" (
      lib.hasInfix " --publisher /run/nixcache/publisher.sock " (matchBlock minimal)
    );

  "server: the publisher holds the cache key as a credential, as a static unprivileged user, confined" =
    let
      unit = minimal.systemd.services.nixcache-publisher;
      c = unit.serviceConfig;
      user = minimal.users.users.nixcache-publisher;
    in
    expect.eq "ExecStart" c.ExecStart "${nixcache} publisher --listen /run/nixcache/publisher.sock --registry /etc/nixcache/clients.toml --secret-key-file %d/key --roots /nix/var/nix/gcroots/nixcache --max-nar-size 4G --allow-user nix-ssh"
    ++ expect.eq "LoadCredential" c.LoadCredential [ "key:/var/lib/nixcache/secret-key" ]
    # The daemon imports what the publisher signed from an untrusted user
    # only if it trusts the key: it trusts the public half of every
    # secret-key-files key.
    ++ expect.true "the daemon trusts the key it signs with" (
      lib.elem "/var/lib/nixcache/secret-key" minimal.nix.settings.secret-key-files
    )
    ++ expect.true "a static system user and group of its own" (
      c.User == "nixcache-publisher"
      && c.Group == "nixcache-publisher"
      && !(c.DynamicUser or false)
      && user.isSystemUser
      && user.group == "nixcache-publisher"
      && minimal.users.groups ? nixcache-publisher
    )
    ++ expect.true "not a trusted Nix user" (!lib.elem "nixcache-publisher" minimal.nix.settings.trusted-users)
    ++ expect.true "needs the socket, the checked keys and the daemon" (
      lib.all (u: lib.elem u unit.requires && lib.elem u unit.after) [
        "nixcache-publisher.socket"
        "nixcache-keygen.service"
        "nix-daemon.socket"
      ]
    )
    ++ expect.eq "writes only the pushed roots" c.ReadWritePaths [ "/nix/var/nix/gcroots/nixcache/pushed" ]
    ++ expect.true "which are its own" (
      lib.elem "d /nix/var/nix/gcroots/nixcache/pushed 0755 nixcache-publisher nixcache-publisher -" minimal.systemd.tmpfiles.rules
    )
    ++ lib.concatLists (
      lib.mapAttrsToList (key: want: expect.eq "publisher's ${key}" (c.${key} or null) want) {
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
        ProtectKernelTunables = true;
        ProtectProc = "invisible";
        RestrictSUIDSGID = true;
        MemoryDenyWriteExecute = true;
        SystemCallFilter = [
          "@system-service"
          "~@privileged @resources"
        ];
      }
    );

  "server: maxNarSize and auditLog reach the publisher" =
    let
      config = withClient {
        maxNarSize = "512M";
        auditLog = "/var/log/nixcache/audit.log";
      };
      c = config.systemd.services.nixcache-publisher.serviceConfig;
    in
    expect.accepted config
    ++ expect.true "flags" (
      lib.hasInfix " --max-nar-size 512M " c.ExecStart
      && lib.hasSuffix " --audit-log /var/log/nixcache/audit.log" c.ExecStart
    )
    ++ expect.eq "the roots are writable, and the log's directory is systemd's to make" c.ReadWritePaths [
      "/nix/var/nix/gcroots/nixcache/pushed"
    ]
    # No root step touches the log: a symlink planted beside it would turn
    # one onto another file.
    ++ expect.eq "no root step" (c.ExecStartPre or null) null
    ++ expect.eq "the log's directory, the publisher's" [ c.LogsDirectory c.LogsDirectoryMode ] [
      "nixcache"
      "0750"
    ]
    ++ lib.concatMap (
      size:
      expect.throws "maxNarSize = \"${size}\" is refused" (withClient { maxNarSize = size; })
      .systemd.services.nixcache-publisher.serviceConfig.ExecStart
    ) [
      "lots"
      "0"
      "1T"
    ];

  "server: refuses an audit log it cannot write or name" =
    expect.refused (withClient { auditLog = "audit.log"; }) [ "auditLog = \"audit.log\" must be the absolute path of a file" ]
    ++ expect.refused (withClient { auditLog = "/var/log/nixcache/"; }) [ "must be the absolute path of a file" ]
    ++ expect.refused (withClient { auditLog = "/var/log/my audit.log"; }) [ "must be the absolute path of a file" ]
    # Someone who controls what an admin pastes: the path's last character
    # is a word of systemd's command lines too. A backslash joins the next
    # line of the unit to the root ExecStartPre's command, a % is a
    # specifier, a space or a line break ends the word.
    ++ lib.concatMap (
      f: expect.refused (withClient { auditLog = f; }) [ "must be the absolute path of a file" ]
    ) [
      "/var/log/audit.log\\"
      "/var/log/audit.log%"
      "/var/log/audit.log "
      "/var/log/audit.log\n"
      "/var/log/audit.log;"
      "/var/log/audit.log\""
      # root's chown and chmod would take the directory above
      "/var/log/nixcache/.."
      "/var/log/nixcache/."
      "/var/log/../audit.log"
    ]
    ++ lib.concatMap
      (
        f:
        expect.refused (withClient { auditLog = f; }) [
          "auditLog"
          "a directory of its own under /var/log"
        ]
      )
      [
        "/nix/store/00000000000000000000000000000000-audit.log"
        "/tmp/audit.log"
        "/var/lib/nix-ssh/audit.log"
        "/var/log/audit.log"
      ];

  "server: published mode: serve is told, and serves the channel alone" =
    let
      config = withClient { publishMode = "published"; };
    in
    expect.accepted config
    ++ expect.true "ForceCommand" (lib.hasInfix "\n  ForceCommand ${dispatcherIn "published"}\n" (matchBlock config))
    ++ expect.eq "authorized keys" config.users.users.nix-ssh.openssh.authorizedKeys.keys [
      (line (dispatcherIn "published") clientKeyBare "laptop")
    ]
    ++ expect.throws "publishMode = \"some\" is refused" (withClient { publishMode = "some"; })
      .services.openssh.extraConfig;

  # nix-daemon --stdio answers for the whole store: nothing to restrict.
  "server: refuses published mode with ssh-ng" =
    let
      message = [
        "publishMode = \"published\" with protocol = \"ssh-ng\""
        "Set protocol = \"ssh\""
      ];
    in
    expect.refused (withClient {
      publishMode = "published";
      protocol = "ssh-ng";
    }) message
    # Either alone is fine.
    ++ expect.accepted (withClient { protocol = "ssh-ng"; })
    ++ expect.accepted (withClient { publishMode = "published"; });

  "server: refuses published mode with nix.sshServe, which serves the whole store" =
    let
      withSshServe =
        mode:
        evalConfig [
          {
            services.nixcache.server = {
              enable = true;
              clients.a.key = clientKey;
              publishMode = mode;
            };
            nix.sshServe.enable = true;
          }
        ];
      message = "publishMode = \"published\" with nix.sshServe.enable";
    in
    expect.refused (withSshServe "published") [
      message
      "nix-store --serve on the whole store"
    ]
    # (nix.sshServe is refused anyway; this message says why published
    # mode in particular cannot have it.)
    ++ expect.true "not said in mode all" (
      !lib.any (lib.hasInfix message) (failedAssertions (withSshServe "all"))
    );

  "server: a push client with ssh-ng gets a warning that ssh-ng keys can already write" =
    let
      pushNg = server {
        protocol = "ssh-ng";
        clients.laptop.key = clientKey;
        clients.ci = {
          key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkyTU8ZFNjVcZtJ1Yq5sTRo0Y2m7lJ4vVv3+4Yb6R0T";
          role = "push";
        };
      };
      said = config: lib.any (lib.hasInfix "already lets every client key, pull keys included, write") config.warnings;
    in
    expect.accepted pushNg
    ++ expect.true "warned, naming the client" (
      said pushNg && lib.any (lib.hasInfix "clients ci have role \"push\"") pushNg.warnings
    )
    ++ expect.true "not without a push client" (!said (withClient { protocol = "ssh-ng"; }))
    ++ expect.true "not with ssh" (
      !said (server {
        clients.ci = {
          key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHkyTU8ZFNjVcZtJ1Yq5sTRo0Y2m7lJ4vVv3+4Yb6R0T";
          role = "push";
        };
      })
    );

  "server: refuses a Nix too old to sign unprivileged" =
    expect.refused
      (evalConfig [
        {
          services.nixcache.server = {
            enable = true;
            clients.a.key = clientKey;
          };
          nix.package = fakePackage "nix" "2.3.18" { };
        }
      ])
      [ "Nix 2.3.18" "use Nix 2.17 or later" ];
}
