# The one place that turns clients into sshd configuration: the registry
# file `nixcache clients add` writes and the server module's inline
# `clients.<name>` both become lines of the cache account's authorized_keys,
# exactly as `nixcache clients authorized-keys` renders them, and the
# registry file `nixcache serve` reads, exactly as `nixcache clients` writes
# it. Each client has a role, "pull" (the default) or "push".
#
# Plain builtins, no nixpkgs: the Go tests evaluate this file with
# nix-instantiate and compare it with the CLI's output line for line.
let
  # The registry formats this module reads, as internal/registry: version
  # 1 has no roles (every client pulls), version 2 adds role = "pull" or
  # "push". A newer file is refused rather than read without what it adds.
  # A file is written as version 1 while no client is push, so it is then
  # what nixcache wrote before roles.
  oldestVersion = 1;
  rolesVersion = 2;
  roles = [
    "pull"
    "push"
  ];
  roleOf = client: if (client.role or null) == null then "pull" else client.role;

  # As internal/registry: safe as a TOML table, an authorized_keys comment,
  # an attribute name and a file name.
  validName = name: builtins.match "[A-Za-z0-9][A-Za-z0-9._-]{0,62}" name != null;

  # "TYPE BASE64 [COMMENT]" on one line, no authorized_keys options before
  # it. x/crypto/ssh checks keys properly when `nixcache clients add` writes
  # the registry; this catches what a hand-written inline key gets wrong.
  keyTypes = "ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp256|ecdsa-sha2-nistp384|ecdsa-sha2-nistp521|sk-ssh-ed25519@openssh\\.com|sk-ecdsa-sha2-nistp256@openssh\\.com";
  parseKey = text: builtins.match "[[:space:]]*((${keyTypes}) [A-Za-z0-9+/]+={0,2})([ \t][^\r\n]*)?" text;

  # A TOML basic string, as internal/registry's quote writes it for the
  # text it accepts: keys, and comments without control characters.
  quote = s: "\"${builtins.replaceStrings [ "\\" "\"" ] [ "\\\\" "\\\"" ] s}\"";

  # Problems with one client, as messages that name where it came from.
  problemsOf =
    origin: name: client:
    (
      if validName name then
        [ ]
      else
        [
          "${origin}: client name \"${name}\" is not allowed: use 1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
        ]
    )
    # The CLI refuses a registry with such a comment, and so would every
    # login that reads it.
    ++ (
      if builtins.match "[^[:cntrl:]]*" (client.comment or "") == null then
        [
          "${origin}: the comment of client \"${name}\" has a control character (such as a tab or a line break): keep it to one line of text"
        ]
      else
        [ ]
    )
    ++ (
      if builtins.elem (roleOf client) roles then
        [ ]
      else
        [
          "${origin}: the role of client \"${name}\" is ${
            if builtins.isString client.role then "\"${client.role}\"" else "not a string"
          }: use \"pull\" or \"push\" (push also uploads)"
        ]
    )
    ++ (
      if !(builtins.isString (client.key or null)) then
        [ "${origin}: client \"${name}\" has no key" ]
      else if parseKey client.key == null then
        [
          "${origin}: the key of client \"${name}\" is not one OpenSSH public key \"TYPE BASE64 [COMMENT]\" (such as the content of id_ed25519.pub) without options"
        ]
      else
        [ ]
    );

  # name -> { key = "TYPE BASE64"; comment; role; }, keeping only
  # well-formed clients; problems lists the rest. A client without a role
  # (or with role = null) pulls.
  normalise =
    origin: clients:
    let
      names = builtins.attrNames clients;
      problems = builtins.concatLists (map (n: problemsOf origin n clients.${n}) names);
      good = builtins.filter (n: problemsOf origin n clients.${n} == [ ]) names;
    in
    {
      inherit problems;
      clients = builtins.listToAttrs (
        map (n: {
          name = n;
          value = {
            key = builtins.head (parseKey clients.${n}.key);
            comment = clients.${n}.comment or "";
            role = roleOf clients.${n};
            inherit origin;
          };
        }) good
      );
    };
in
{
  # Reads a registry file written by `nixcache clients`. `origin` names it
  # in messages.
  readFile =
    file:
    let
      origin = toString file;
      doc = builtins.fromTOML (builtins.readFile file);
      version = doc.version or null;
      clients = doc.clients or { };
      read = normalise origin clients;
      # A role in a version 1 file is a hand edit that forgot the version;
      # the CLI refuses the file, and so does the module.
      rolesInV1 = builtins.filter (n: clients.${n} ? role) (builtins.attrNames clients);
    in
    if !(builtins.isInt version) || version < oldestVersion || version > rolesVersion then
      {
        clients = { };
        problems = [
          "${origin}: registry version ${
            if version == null then "(missing)" else toString version
          } is not one this module reads (${toString oldestVersion} or ${toString rolesVersion}); write it with `nixcache clients add`, or update nixcache"
        ];
      }
    else if version < rolesVersion && rolesInV1 != [ ] then
      {
        clients = { };
        problems = map (
          n: "${origin}: client \"${n}\" has a role, which needs version = ${toString rolesVersion}; the file says version = ${toString version}"
        ) rolesInV1;
      }
    else
      read;

  inherit normalise;

  # Merges normalised sets, refusing a name or a key given twice: one key
  # is one client, so revoking it by name revokes it everywhere.
  merge =
    sets:
    let
      all = builtins.concatLists (
        map (s: map (n: s.clients.${n} // { name = n; }) (builtins.attrNames s.clients)) sets
      );
      dupes =
        attr: what:
        let
          grouped = builtins.groupBy (c: c.${attr}) all;
        in
        map (
          v:
          let
            cs = grouped.${v};
          in
          "${what} is given ${toString (builtins.length cs)} times: ${
            builtins.concatStringsSep ", " (map (c: "client \"${c.name}\" in ${c.origin}") cs)
          }; give each client one name and its own key"
        ) (builtins.filter (v: builtins.length grouped.${v} > 1) (builtins.attrNames grouped));
    in
    {
      problems =
        builtins.concatLists (map (s: s.problems) sets)
        ++ dupes "name" "a client name"
        ++ dupes "key" "the same key";
      clients = builtins.listToAttrs (
        map (c: {
          inherit (c) name;
          value = {
            inherit (c) key comment;
            role = roleOf c;
          };
        }) all
      );
    };

  # authorized_keys lines, in name order as the CLI writes them. `restrict`
  # turns off PTYs, forwarding and ~/.ssh/rc; command= forces
  # `command name` whatever the client asks to run. `protocol` is the CLI's
  # --protocol: for the dispatcher ("nixcache", the server module's, so the
  # default), a push client's command ends in --role push, the most serve
  # grants the key; "ssh" and "ssh-ng" never upload through nixcache, so
  # their lines carry no role.
  authorizedKeys =
    {
      clients,
      command,
      protocol ? "nixcache",
    }:
    map (
      name:
      let
        role =
          if protocol == "nixcache" && roleOf clients.${name} == "push" then " --role push" else "";
      in
      "restrict,command=\"${command name}${role}\" ${clients.${name}.key} nixcache:${name}"
    ) (builtins.attrNames clients);

  # The clients as a registry file `nixcache serve --registry` reads: what
  # `nixcache clients` writes (internal/registry's Marshal) for the same
  # clients, under `header` (comment lines) instead of the CLI's own:
  # version 2 with role = "push" when a client is push (pull is never
  # written), else version 1.
  toTOML =
    { clients, header }:
    let
      anyPush = builtins.any (n: roleOf clients.${n} == "push") (builtins.attrNames clients);
    in
    header
    + "version = ${toString (if anyPush then rolesVersion else oldestVersion)}\n"
    + builtins.concatStringsSep "" (
      map (
        name:
        let
          c = clients.${name};
        in
        "\n[clients.${if builtins.match ".*[.].*" name != null then quote name else name}]\n"
        + "key = ${quote c.key}\n"
        + (if roleOf c == "push" then "role = \"push\"\n" else "")
        + (if c.comment == "" then "" else "comment = ${quote c.comment}\n")
      ) (builtins.attrNames clients)
    );
}
