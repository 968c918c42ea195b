# A mirror of the nixpkgs (nixos-26.05 / master) option declarations that
# nixos/server.nix and nixos/client.nix set or read, so that those modules
# can be evaluated with plain `lib.evalModules` and nixpkgs' lib alone: no
# package set, no NixOS.
#
# Names, types and behaviour-relevant defaults follow upstream. Each group
# names the nixpkgs file it mirrors. Descriptions are left out. Values that
# upstream takes from `pkgs` are stand-ins (see `fakeDrv` below).
#
# Upstream submodules also carry some `config` of their own (a user's
# `name` defaults to the attribute name, `isNormalUser` sets `home`, an
# /etc entry's `source` comes from its `text`, ...). Where that needs no
# package set it is reproduced in the same submodule; where it does it is
# left out, and a comment says so.
#
# Top-level `config` that nixpkgs sets (substituters, trusted keys, ...)
# is in ./nixpkgs-defaults.nix, not here.
{ config, lib, ... }:

let
  inherit (lib)
    concatMap
    elem
    filterAttrs
    isList
    mapAttrsToList
    mkDefault
    mkDerivedConfig
    mkIf
    mkMerge
    mkOption
    mkOptionType
    optionalAttrs
    stringLength
    toList
    types
    ;

  # Stand-in for a derivation from `pkgs`. It is not buildable: the store
  # hash is fake and there is no drvPath. It is shaped only to pass lib's
  # `types.package` (isDerivation), `types.path` and `types.pathInStore`
  # checks, and `lib.getVersion`. Versions are illustrative.
  fakeDrv =
    name: attrs:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
    }
    // attrs;

  # Stand-in for pkgs.nix, which on nixos-26.05 is nixVersions.stable =
  # nix_2_34 (pkgs/tools/package-management/nix/default.nix: 2.34.6 at the
  # time of writing). nixos-25.11's is nix_2_31 (2.31.x); the tests set
  # that one explicitly where it matters.
  nixStandIn = fakeDrv "nix-2.34.6" {
    pname = "nix";
    version = "2.34.6";
  };

  # Stand-in for pkgs.openssh.
  opensshStandIn = fakeDrv "openssh-10.0p2" {
    pname = "openssh";
    version = "10.0p2";
  };

  # Stand-in for pkgs.systemd.
  systemdStandIn = fakeDrv "systemd-258.2" {
    pname = "systemd";
    version = "258.2";
  };

  # Stand-in for pkgs.shadow, the upstream default of users.users.<name>.shell.
  shadowStandIn = fakeDrv "shadow-4.17.4" {
    pname = "shadow";
    version = "4.17.4";
  };

  # Stand-in for pkgs.writeText: keeps the text so tests can read it back.
  writeTextStandIn = name: text: fakeDrv name { inherit text; };

  # nixos/lib/systemd-lib.nix: unitNameType
  unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";

  # nixos/lib/systemd-unit-options.nix: unitOption. A list on any side
  # concatenates; otherwise all definitions must be equal.
  unitOption = mkOptionType {
    name = "systemd option";
    merge =
      loc: defs:
      let
        defs' = lib.filterOverrides defs;
      in
      if lib.any (def: isList def.value) defs' then
        concatMap (def: toList def.value) defs'
      else
        lib.mergeEqualOption loc defs';
  };

  # nixos/lib/systemd-lib.nix: assertValueOneOf and checkUnitConfig, as used
  # by checkService in nixos/lib/systemd-unit-options.nix. A bad Type= or
  # Restart= makes the serviceConfig definition fail its type check.
  assertValueOneOf =
    name: values: attr:
    if attr ? ${name} && !elem attr.${name} values then
      builtins.trace "Systemd Service field `${name}' cannot have value `${toString attr.${name}}'." false
    else
      true;
  checkService =
    attrs:
    lib.all (check: check attrs) [
      (assertValueOneOf "Type" [
        "exec"
        "simple"
        "forking"
        "oneshot"
        "dbus"
        "notify"
        "notify-reload"
        "idle"
      ])
      (assertValueOneOf "Restart" [
        "no"
        "on-success"
        "on-failure"
        "on-abnormal"
        "on-abort"
        "always"
      ])
    ];

  # nixos/lib/systemd-unit-options.nix: sharedOptions + commonUnitOptions +
  # stage2CommonUnitOptions (only the sub-options listed here; upstream also
  # has overrideStrategy, upheldBy, aliases, upholds, conflicts, requisite,
  # onFailure, onSuccess, startLimitBurst, startLimitIntervalSec,
  # reloadTriggers).
  unitListOption = mkOption {
    type = types.listOf unitNameType;
    default = [ ];
  };
  stage2CommonUnitOptions = {
    options = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      name = mkOption { type = types.str; };
      wantedBy = unitListOption;
      requiredBy = unitListOption;
      description = mkOption {
        type = types.singleLineStr;
        default = "";
      };
      documentation = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      requires = unitListOption;
      wants = unitListOption;
      after = unitListOption;
      before = unitListOption;
      bindsTo = unitListOption;
      partOf = unitListOption;
      unitConfig = mkOption {
        type = types.attrsOf unitOption;
        default = { };
      };
      restartTriggers = mkOption {
        type = types.listOf types.unspecified;
        default = [ ];
      };
    };
  };

  # nixos/lib/systemd-lib.nix: unitConfig, the mixin that turns the
  # dependency options into [Unit] keys. Left out: X-Restart-Triggers and
  # X-Reload-Triggers (upstream writes them with pkgs.writeText).
  unitConfigMixin =
    { config, ... }:
    {
      config.unitConfig =
        optionalAttrs (config.requires != [ ]) { Requires = toString config.requires; }
        // optionalAttrs (config.wants != [ ]) { Wants = toString config.wants; }
        // optionalAttrs (config.after != [ ]) { After = toString config.after; }
        // optionalAttrs (config.before != [ ]) { Before = toString config.before; }
        // optionalAttrs (config.bindsTo != [ ]) { BindsTo = toString config.bindsTo; }
        // optionalAttrs (config.partOf != [ ]) { PartOf = toString config.partOf; }
        // optionalAttrs (config.description != "") { Description = config.description; }
        // optionalAttrs (config.documentation != [ ]) {
          Documentation = toString config.documentation;
        };
    };

  # nixos/lib/systemd-lib.nix: serviceConfig / pathConfig / timerConfig set
  # the unit's `name`. Left out for services: environment.PATH built from
  # `path`, the default path (coreutils, findutils, gnugrep, gnused, systemd)
  # and enableStrictShellChecks; all need pkgs.
  unitNameMixin =
    suffix:
    { name, ... }:
    {
      config.name = "${name}.${suffix}";
    };

  # nixos/lib/systemd-unit-options.nix: serviceOptions + stage2ServiceOptions
  # (subset). Left out: the config that turns script/preStart/postStart into
  # ExecStart/ExecStartPre/ExecStartPost (it builds scripts with pkgs), and
  # the timer that nixos/modules/system/boot/systemd.nix makes from startAt.
  serviceOptions = {
    options = {
      environment = mkOption {
        type = types.attrsOf (
          types.nullOr (
            types.oneOf [
              types.str
              types.path
              types.package
            ]
          )
        );
        default = { };
      };
      path = mkOption {
        type = types.listOf (
          types.oneOf [
            types.package
            types.str
          ]
        );
        default = [ ];
      };
      serviceConfig = mkOption {
        type = types.addCheck (types.attrsOf unitOption) checkService;
        default = { };
      };
      script = mkOption {
        type = types.lines;
        default = "";
      };
      scriptArgs = mkOption {
        type = types.str;
        default = "";
      };
      preStart = mkOption {
        type = types.lines;
        default = "";
      };
      postStart = mkOption {
        type = types.lines;
        default = "";
      };
      reload = mkOption {
        type = types.lines;
        default = "";
      };
      preStop = mkOption {
        type = types.lines;
        default = "";
      };
      postStop = mkOption {
        type = types.lines;
        default = "";
      };
      restartIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      reloadIfChanged = mkOption {
        type = types.bool;
        default = false;
      };
      stopIfChanged = mkOption {
        type = types.bool;
        default = true;
      };
      startAt = mkOption {
        type = types.either types.str (types.listOf types.str);
        default = [ ];
        apply = v: if isList v then v else [ v ];
      };
    };
  };

  # nixos/lib/systemd-unit-options.nix: socketOptions
  socketOptions.options = {
    listenStreams = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    listenDatagrams = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    socketConfig = mkOption {
      type = types.attrsOf unitOption;
      default = { };
    };
  };

  # nixos/lib/systemd-unit-options.nix: timerOptions, pathOptions
  timerOptions.options.timerConfig = mkOption {
    type = types.attrsOf unitOption;
    default = { };
  };
  pathOptions.options.pathConfig = mkOption {
    type = types.attrsOf unitOption;
    default = { };
  };

  # nixos/modules/system/boot/systemd/tmpfiles.nix: settingsOption.type
  attrsWith' =
    placeholder: elemType:
    types.attrsWith {
      inherit elemType placeholder;
    };
  tmpfilesEntry =
    { name, ... }:
    {
      options = {
        type = mkOption {
          type = types.str;
          default = name;
        };
        mode = mkOption {
          type = types.str;
          default = "-";
        };
        user = mkOption {
          type = types.str;
          default = "-";
        };
        group = mkOption {
          type = types.str;
          default = "-";
        };
        age = mkOption {
          type = types.str;
          default = "-";
        };
        argument = mkOption {
          type = types.str;
          default = "";
        };
      };
    };

  # nixos/modules/config/nix.nix: semanticConfType, the freeform type of
  # nix.settings.
  semanticConfType =
    let
      confAtom =
        types.nullOr (
          types.oneOf [
            types.bool
            types.int
            types.float
            types.str
            types.path
            types.package
          ]
        )
        // {
          description = "Nix config atom (null, bool, int, float, str, path or package)";
        };
    in
    types.attrsOf (types.either confAtom (types.listOf confAtom));

  # nixos/modules/services/networking/ssh/sshd.nix: settingsFormat.type, i.e.
  # (pkgs.formats.keyValue { ... }).type from pkgs/pkgs-lib/formats.nix.
  # Undeclared keys (MaxStartups, ClientAliveInterval, ...) must be a single
  # atom; lists are only accepted by the declared list-valued options.
  sshdSettingsFreeformType =
    let
      singleAtom =
        types.nullOr (
          types.oneOf [
            types.bool
            types.int
            types.float
            types.str
          ]
        )
        // {
          description = "atom (null, bool, int, float or string)";
        };
    in
    types.attrsOf singleAtom;

  recommendedAlgorithms = config.services.openssh.enableRecommendedAlgorithms;

  cfgUsers = config.users;

  # nixos/modules/services/networking/firewall.nix: canonicalizePortList
  canonicalizePortList = ports: lib.unique (builtins.sort builtins.lessThan ports);
in
{
  # nixos/modules/services/networking/ssh/sshd.nix declares its per-user
  # options (userOptions) as a second declaration of users.users, merged into
  # the users-groups.nix submodule; mirrored the same way.
  imports = [
    {
      options.users.users = mkOption {
        type = types.attrsOf (
          types.submodule {
            options.openssh = {
              authorizedKeys = {
                keys = mkOption {
                  type = types.listOf types.singleLineStr;
                  default = [ ];
                };
                keyFiles = mkOption {
                  type = types.listOf types.path;
                  default = [ ];
                };
              };
              authorizedPrincipals = mkOption {
                type = types.listOf types.singleLineStr;
                default = [ ];
              };
            };
          }
        );
      };
    }
  ];

  options = {
    # nixos/modules/misc/assertions.nix
    assertions = mkOption {
      type = types.listOf types.unspecified;
      internal = true;
      default = [ ];
    };
    warnings = mkOption {
      type = types.listOf types.str;
      internal = true;
      default = [ ];
    };

    # nixos/modules/tasks/network-interfaces.nix
    # Upstream default: config.system.nixos.distroId, which is "nixos".
    networking.hostName = mkOption {
      type = types.strMatching "^$|^[[:alnum:]]([[:alnum:]_-]{0,61}[[:alnum:]])?$";
      default = "nixos";
    };

    # nixos/modules/services/networking/firewall.nix (commonOptions and enable)
    networking.firewall = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      allowedTCPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
        apply = canonicalizePortList;
      };
      allowedUDPPorts = mkOption {
        type = types.listOf types.port;
        default = [ ];
        apply = canonicalizePortList;
      };
    };

    # nixos/modules/services/system/nix-daemon.nix
    nix.enable = mkOption {
      type = types.bool;
      default = true;
    };
    # Upstream default: pkgs.nix. Here a stand-in attrset (see fakeDrv).
    nix.package = mkOption {
      type = types.package;
      default = nixStandIn;
    };

    # nixos/modules/config/nix.nix
    # substituters, trusted-public-keys, trusted-users and system-features
    # have no option default: upstream's config sets them (see
    # ./nixpkgs-defaults.nix).
    # Everything not declared here, e.g. secret-key-files,
    # extra-trusted-public-keys, builders-use-substitutes, experimental-features,
    # is freeform (semanticConfType).
    nix.settings = mkOption {
      type = types.submodule {
        freeformType = semanticConfType;
        options = {
          allowed-users = mkOption {
            type = types.listOf types.str;
            default = [ "*" ];
          };
          auto-optimise-store = mkOption {
            type = types.bool;
            default = false;
          };
          cores = mkOption {
            type = types.int;
            default = 0;
          };
          extra-sandbox-paths = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
          max-jobs = mkOption {
            type = types.either types.int (types.enum [ "auto" ]);
            default = "auto";
          };
          require-sigs = mkOption {
            type = types.bool;
            default = true;
          };
          sandbox = mkOption {
            type = types.either types.bool (types.enum [ "relaxed" ]);
            default = true;
          };
          substituters = mkOption { type = types.listOf types.str; };
          # No option default upstream either: nix.nix's config sets it with
          # mkDefault (see ./nixpkgs-defaults.nix).
          system-features = mkOption { type = types.listOf types.str; };
          trusted-public-keys = mkOption { type = types.listOf types.str; };
          trusted-substituters = mkOption {
            type = types.listOf types.str;
            default = [ ];
          };
          trusted-users = mkOption { type = types.listOf types.str; };
        };
      };
      default = { };
    };

    # nixos/modules/services/misc/nix-ssh-serve.nix (enable and keys only;
    # server.nix reads enable in an assertion).
    nix.sshServe = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      keys = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
    };

    # nixos/modules/services/misc/nix-gc.nix
    nix.gc.automatic = mkOption {
      type = types.bool;
      default = false;
    };

    # nixos/modules/services/networking/ssh/sshd.nix
    # Left out: moduliFile and sftpServerExecutable (no option default;
    # upstream sets them with mkDefault from the package when sshd is
    # enabled), and the services.openssh.knownHosts alias of
    # programs.ssh.knownHosts.
    services.openssh = {
      enable = mkOption {
        type = types.bool;
        default = false;
      };
      package = mkOption {
        type = types.package;
        default = config.programs.ssh.package;
      };
      allowSFTP = mkOption {
        type = types.bool;
        default = true;
      };
      authorizedKeysCommand = mkOption {
        type = types.str;
        default = "none";
      };
      authorizedKeysCommandUser = mkOption {
        type = types.str;
        default = "nobody";
      };
      # Upstream's config adds "%h/.ssh/authorized_keys" (if
      # authorizedKeysInHomedir) and "/etc/ssh/authorized_keys.d/%u" when
      # sshd is enabled; that is config and not reproduced.
      authorizedKeysFiles = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      authorizedKeysInHomedir = mkOption {
        type = types.bool;
        default = true;
      };
      enableRecommendedAlgorithms = mkOption {
        type = types.bool;
        default = true;
      };
      # Upstream's config prepends the generated lines (AddressFamily, Port,
      # AuthorizedKeysFile, HostKey, ...) with mkOrder 0; not reproduced.
      extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
      generateHostKeys = mkOption {
        type = types.bool;
        default = config.services.openssh.enable;
      };
      hostKeys = mkOption {
        type = types.listOf types.attrs;
        default = [
          {
            type = "rsa";
            bits = 4096;
            path = "/etc/ssh/ssh_host_rsa_key";
          }
          {
            type = "ed25519";
            path = "/etc/ssh/ssh_host_ed25519_key";
          }
        ];
      };
      listenAddresses = mkOption {
        type = types.listOf (
          types.submodule {
            options = {
              addr = mkOption {
                type = types.nullOr types.str;
                default = null;
              };
              port = mkOption {
                type = types.nullOr types.port;
                default = null;
              };
            };
          }
        );
        default = [ ];
      };
      # Default true: whenever sshd is enabled, upstream's config opens
      # every one of `ports` (reproduced in ./nixpkgs-defaults.nix).
      openFirewall = mkOption {
        type = types.bool;
        default = true;
      };
      ports = mkOption {
        type = types.listOf types.port;
        default = [ 22 ];
      };
      sftpFlags = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      startWhenNeeded = mkOption {
        type = types.bool;
        default = false;
      };
      # Declared keys below; anything else (MaxStartups, ClientAliveInterval,
      # AuthenticationMethods, ...) is freeform: a single atom, no list.
      settings = mkOption {
        type = types.submodule {
          freeformType = sshdSettingsFreeformType;
          options = {
            AcceptEnv = mkOption {
              type = types.nullOr (types.listOf types.str);
              default = null;
            };
            AllowGroups = mkOption {
              type = types.nullOr (types.listOf types.str);
              default = null;
            };
            AllowUsers = mkOption {
              type = types.nullOr (types.listOf types.str);
              default = null;
            };
            AuthorizedPrincipalsFile = mkOption {
              type = types.nullOr types.str;
              default = "none";
            };
            Banner = mkOption {
              type = types.nullOr types.path;
              default = null;
            };
            Ciphers = mkOption {
              type = types.nullOr (types.listOf types.str);
              default =
                if recommendedAlgorithms then
                  [
                    "chacha20-poly1305@openssh.com"
                    "aes256-gcm@openssh.com"
                    "aes128-gcm@openssh.com"
                    "aes256-ctr"
                    "aes192-ctr"
                    "aes128-ctr"
                  ]
                else
                  null;
            };
            DenyGroups = mkOption {
              type = types.nullOr (types.listOf types.str);
              default = null;
            };
            DenyUsers = mkOption {
              type = types.nullOr (types.listOf types.str);
              default = null;
            };
            GatewayPorts = mkOption {
              type = types.nullOr types.str;
              default = "no";
            };
            KbdInteractiveAuthentication = mkOption {
              type = types.nullOr types.bool;
              default = true;
            };
            KexAlgorithms = mkOption {
              type = types.nullOr (types.listOf types.str);
              default =
                if recommendedAlgorithms then
                  [
                    "mlkem768x25519-sha256"
                    "sntrup761x25519-sha512"
                    "sntrup761x25519-sha512@openssh.com"
                    "curve25519-sha256"
                    "curve25519-sha256@libssh.org"
                    "diffie-hellman-group-exchange-sha256"
                  ]
                else
                  null;
            };
            LogLevel = mkOption {
              type = types.nullOr (
                types.enum [
                  "QUIET"
                  "FATAL"
                  "ERROR"
                  "INFO"
                  "VERBOSE"
                  "DEBUG"
                  "DEBUG1"
                  "DEBUG2"
                  "DEBUG3"
                ]
              );
              default = "INFO";
            };
            Macs = mkOption {
              type = types.nullOr (types.listOf types.str);
              default =
                if recommendedAlgorithms then
                  [
                    "hmac-sha2-512-etm@openssh.com"
                    "hmac-sha2-256-etm@openssh.com"
                    "umac-128-etm@openssh.com"
                  ]
                else
                  null;
            };
            PasswordAuthentication = mkOption {
              type = types.nullOr types.bool;
              default = true;
            };
            PermitRootLogin = mkOption {
              type = types.nullOr (
                types.enum [
                  "yes"
                  "without-password"
                  "prohibit-password"
                  "forced-commands-only"
                  "no"
                ]
              );
              default = "prohibit-password";
            };
            PrintMotd = mkOption {
              type = types.nullOr types.bool;
              default = false;
            };
            StrictModes = mkOption {
              type = types.nullOr types.bool;
              default = true;
            };
            UseDns = mkOption {
              type = types.nullOr types.bool;
              default = false;
            };
            UsePAM = mkOption {
              type = types.nullOr types.bool;
              default = true;
            };
            X11Forwarding = mkOption {
              type = types.nullOr types.bool;
              default = false;
            };
          };
        };
        default = { };
      };
    };

    # nixos/modules/config/users-groups.nix (subset of userOpts and groupOpts,
    # with their own config). Left out among others: the password options,
    # subUidRanges/subGidRanges, packages, linger, cryptHomeLuks, pamMount.
    users.mutableUsers = mkOption {
      type = types.bool;
      default = true;
    };
    users.defaultUserHome = mkOption {
      type = types.str;
      default = "/home";
    };
    # nixos/modules/programs/shadow.nix: type `either path shellPackage`, no
    # option default; nixos/modules/programs/bash/bash.nix sets it with
    # mkDefault pkgs.bashInteractive (reproduced in ./nixpkgs-defaults.nix).
    users.defaultUserShell = mkOption {
      type = types.either types.path types.shellPackage;
    };
    users.users = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, config, ... }:
          {
            options = {
              enable = mkOption {
                type = types.bool;
                default = true;
              };
              name = mkOption {
                type = types.passwdEntry types.str;
                apply =
                  x:
                  assert (
                    stringLength x < 32 || abort "Username '${x}' is longer than 31 characters which is not allowed!"
                  );
                  x;
              };
              description = mkOption {
                type = types.passwdEntry types.str;
                default = "";
              };
              uid = mkOption {
                type = types.nullOr types.int;
                default = null;
              };
              isSystemUser = mkOption {
                type = types.bool;
                default = false;
              };
              isNormalUser = mkOption {
                type = types.bool;
                default = false;
              };
              group = mkOption {
                type = types.str;
                apply =
                  x:
                  assert (
                    stringLength x < 32 || abort "Group name '${x}' is longer than 31 characters which is not allowed!"
                  );
                  x;
                default = "";
              };
              extraGroups = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              home = mkOption {
                type = types.passwdEntry types.path;
                default = "/var/empty";
              };
              homeMode = mkOption {
                type = types.strMatching "[0-7]{1,5}";
                default = "700";
              };
              # Upstream default: pkgs.shadow (a stand-in here).
              shell = mkOption {
                type = types.nullOr (types.either types.shellPackage (types.passwdEntry types.path));
                default = shadowStandIn;
              };
              createHome = mkOption {
                type = types.bool;
                default = false;
              };
              useDefaultShell = mkOption {
                type = types.bool;
                default = false;
              };
            };
            config = mkMerge [
              {
                name = mkDefault name;
                shell = mkIf config.useDefaultShell (mkDefault cfgUsers.defaultUserShell);
              }
              (mkIf config.isNormalUser {
                group = mkDefault "users";
                createHome = mkDefault true;
                home = mkDefault "${cfgUsers.defaultUserHome}/${config.name}";
                homeMode = mkDefault "700";
                useDefaultShell = mkDefault true;
                isSystemUser = mkDefault false;
              })
            ];
          }
        )
      );
      default = { };
    };
    users.groups = mkOption {
      type = types.attrsOf (
        types.submodule (
          { name, config, ... }:
          {
            options = {
              name = mkOption { type = types.passwdEntry types.str; };
              gid = mkOption {
                type = types.nullOr types.int;
                default = null;
              };
              members = mkOption {
                type = types.listOf (types.passwdEntry types.str);
                default = [ ];
              };
            };
            config = {
              name = mkDefault name;
              members = mapAttrsToList (n: u: u.name) (
                filterAttrs (n: u: u.enable && elem config.name u.extraGroups) cfgUsers.users
              );
            };
          }
        )
      );
      default = { };
    };

    # nixos/modules/system/boot/systemd.nix: lib.mkPackageOption pkgs "systemd" { }
    systemd.package = mkOption {
      type = types.package;
      default = systemdStandIn;
    };

    # nixos/modules/system/boot/systemd.nix (systemd.services/paths/timers),
    # types from nixos/lib/systemd-types.nix.
    systemd.services = mkOption {
      type = types.attrsOf (
        types.submodule [
          stage2CommonUnitOptions
          serviceOptions
          unitConfigMixin
          (unitNameMixin "service")
        ]
      );
      default = { };
    };
    systemd.paths = mkOption {
      type = types.attrsOf (
        types.submodule [
          stage2CommonUnitOptions
          pathOptions
          unitConfigMixin
          (unitNameMixin "path")
        ]
      );
      default = { };
    };
    systemd.sockets = mkOption {
      type = types.attrsOf (
        types.submodule [
          stage2CommonUnitOptions
          socketOptions
          unitConfigMixin
          (unitNameMixin "socket")
        ]
      );
      default = { };
    };
    systemd.timers = mkOption {
      type = types.attrsOf (
        types.submodule [
          stage2CommonUnitOptions
          timerOptions
          unitConfigMixin
          (unitNameMixin "timer")
        ]
      );
      default = { };
    };

    # nixos/modules/system/boot/systemd/tmpfiles.nix
    systemd.tmpfiles.rules = mkOption {
      type = types.listOf types.str;
      default = [ ];
    };
    systemd.tmpfiles.settings = mkOption {
      type = attrsWith' "config-name" (
        attrsWith' "tmpfiles-type" (attrsWith' "path" (types.submodule tmpfilesEntry))
      );
      default = { };
    };

    # nixos/modules/system/etc/etc.nix
    environment.etc = mkOption {
      type = types.attrsOf (
        types.submodule (
          {
            name,
            config,
            options,
            ...
          }:
          {
            options = {
              enable = mkOption {
                type = types.bool;
                default = true;
              };
              target = mkOption { type = types.str; };
              text = mkOption {
                type = types.nullOr types.lines;
                default = null;
              };
              source = mkOption { type = types.path; };
              mode = mkOption {
                type = types.str;
                default = "symlink";
              };
              uid = mkOption {
                type = types.int;
                default = 0;
              };
              gid = mkOption {
                type = types.int;
                default = 0;
              };
              user = mkOption {
                type = types.str;
                default = "+${toString config.uid}";
              };
              group = mkOption {
                type = types.str;
                default = "+${toString config.gid}";
              };
            };
            # Upstream: source = pkgs.writeText "etc-<name>" text, via
            # mkDerivedConfig. Here writeTextStandIn keeps the text.
            config = {
              target = mkDefault name;
              source = mkIf (config.text != null) (
                let
                  name' = "etc-" + lib.replaceStrings [ "/" ] [ "-" ] name;
                in
                mkDerivedConfig options.text (writeTextStandIn name')
              );
            };
          }
        )
      );
      default = { };
    };

    # nixos/modules/config/system-path.nix
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };

    # nixos/modules/programs/ssh.nix
    # The generated /etc/ssh/ssh_config is extraConfig first, then a
    # "Host *" block with GlobalKnownHostsFile and the generated options.
    programs.ssh = {
      # Upstream: lib.mkPackageOption pkgs "openssh" { } (a stand-in here).
      package = mkOption {
        type = types.package;
        default = opensshStandIn;
      };
      extraConfig = mkOption {
        type = types.lines;
        default = "";
      };
      forwardX11 = mkOption {
        type = types.nullOr types.bool;
        default = false;
      };
      startAgent = mkOption {
        type = types.bool;
        default = false;
      };
      pubkeyAcceptedKeyTypes = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      hostKeyAlgorithms = mkOption {
        type = types.listOf types.str;
        default = [ ];
      };
      kexAlgorithms = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
      };
      ciphers = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
      };
      macs = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
      };
      knownHosts = mkOption {
        type = types.attrsOf (
          types.submodule (
            { name, config, ... }:
            {
              options = {
                certAuthority = mkOption {
                  type = types.bool;
                  default = false;
                };
                hostNames = mkOption {
                  type = types.listOf types.str;
                  default = [ name ] ++ config.extraHostNames;
                };
                extraHostNames = mkOption {
                  type = types.listOf types.str;
                  default = [ ];
                };
                publicKey = mkOption {
                  type = types.nullOr types.str;
                  default = null;
                };
                publicKeyFile = mkOption {
                  type = types.nullOr types.path;
                  default = null;
                };
              };
            }
          )
        );
        default = { };
      };
      knownHostsFiles = mkOption {
        type = types.listOf types.path;
        default = [ ];
      };
    };

    # nixos/modules/system/activation/top-level.nix
    system.extraDependencies = mkOption {
      type = types.listOf types.pathInStore;
      default = [ ];
    };

    # Options only the VM test's nodes set (./eval-vm.nix evaluates them).

    # nixos/modules/system/activation/activation-script.nix: scriptType
    system.activationScripts = mkOption {
      type = types.attrsOf (
        types.either types.str (
          types.submodule {
            options = {
              text = mkOption { type = types.lines; };
              deps = mkOption {
                type = types.listOf types.str;
                default = [ ];
              };
              supportsDryActivation = mkOption {
                type = types.bool;
                default = false;
              };
            };
          }
        )
      );
      default = { };
    };

    # nixos/modules/system/activation/specialisation.nix. Upstream types
    # `configuration` as an extension of the whole system (extendModules);
    # here it is kept as a module, which ./eval-vm.nix evaluates on top of
    # its parent as inheritParentConfig = true does.
    specialisation = mkOption {
      type = types.attrsOf (
        types.submodule {
          options = {
            inheritParentConfig = mkOption {
              type = types.bool;
              default = true;
            };
            configuration = mkOption {
              type = types.deferredModule;
              default = { };
            };
          };
        }
      );
      default = { };
    };

    # nixos/modules/config/networking.nix
    networking.hosts = mkOption {
      type = types.attrsOf (types.listOf types.str);
      default = { };
    };

    # nixos/modules/misc/documentation.nix
    documentation.enable = mkOption {
      type = types.bool;
      default = true;
    };
  };
}
