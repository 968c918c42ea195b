# The whole cache in three VMs: `server` runs services.nixcache.server,
# `client` is registered and substitutes from it (and, in its `push`
# specialisation, logs in with a second key whose role is push and
# uploads), `outsider` runs the same client module but is not registered.
# Keys under ./test-keys are TEST ONLY.
#
# Used by the flake: pkgs.testers.runNixOSTest (import ./vm-cache.nix { inherit pkgs nixcacheModule; })
{ pkgs, nixcacheModule }:
let
  inherit (pkgs) lib;

  # The key the server rotates to. The clients are configured to trust it
  # (and cache.nixos.org) only; until the rotation the test hands them the
  # key the server generated at boot, as an admin reads it from
  # /etc/nixcache/public-key.
  rotatedPublicKey = lib.fileContents ./test-keys/signing-2.public;
  rotatedKeyName = lib.head (lib.splitString ":" rotatedPublicKey);
  hostKey = lib.fileContents ./test-keys/host_ed25519.pub;

  # The client's second key, registered on the server with the role push;
  # the client logs in with it in its `push` specialisation.
  pushKeyFile = "/var/lib/nixcache/client/push_ed25519";
  pushClient = {
    key = lib.fileContents ./test-keys/pusher_ed25519.pub;
    role = "push";
    comment = "TEST-ONLY nixcache VM test pusher";
  };

  # A tiny derivation that needs no nixpkgs: `nix-build this --argstr name X`.
  testDerivation = pkgs.writeText "nixcache-test-derivation.nix" ''
    { name }:
    derivation {
      inherit name;
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" "echo ''${name} > $out" ];
    }
  '';

  # A path with a reference, for `nixcache push --recursive`:
  # `nix-build this --argstr name X` builds X, which names X-dep.
  closureDerivation = pkgs.writeText "nixcache-test-closure.nix" ''
    { name }:
    let
      dep = derivation {
        name = "''${name}-dep";
        system = builtins.currentSystem;
        builder = "/bin/sh";
        args = [ "-c" "echo ''${name} > $out" ];
      };
    in
    derivation {
      inherit name;
      system = builtins.currentSystem;
      builder = "/bin/sh";
      args = [ "-c" "echo ''${dep} > $out" ];
    }
  '';

  # The rotation, as an admin would do it (see the README).
  rotation = {
    keyName = rotatedKeyName;
    secretKeyFile = "/var/lib/nixcache/secret-key-2";
    extraSecretKeyFiles = [ "/var/lib/nixcache/secret-key" ];
    publicKey = rotatedPublicKey;
  };

  clientNode = {
    imports = [ nixcacheModule ];
    services.nixcache.client = {
      enable = true;
      host = "server";
      publicKey = rotatedPublicKey;
      inherit hostKey;
    };
  };
in
{
  name = "nixcache";
  globalTimeout = 1800;

  defaults = {
    documentation.enable = false;
    # In each system's closure, so the store in the VM has it registered and
    # rooted: a garbage collection would remove it otherwise.
    environment.etc."nixcache-test/derivation.nix".source = testDerivation;
    environment.etc."nixcache-test/closure.nix".source = closureDerivation;
    nix.settings.experimental-features = [ "nix-command" ];
    # The paths under test come from the cache or from local builds, never
    # from cache.nixos.org, which the VMs cannot reach: make that fail at
    # once (connection refused) instead of waiting on DNS.
    networking.hosts."127.0.0.1" = [ "cache.nixos.org" ];
    nix.settings.connect-timeout = 1;
  };

  nodes = {
    server = {
      imports = [ nixcacheModule ];
      services.nixcache.server = {
        enable = true;
        registryFile = ./registry.toml;
        openFirewall = true;
        # Only the path unit (or an explicit start) signs during the test,
        # so each story shows which of them did.
        signInterval = "1h";
        clients.pusher = pushClient;
      };
      # A pinned, TEST-ONLY host key; a real server generates its own.
      services.openssh.hostKeys = [
        {
          type = "ed25519";
          path = "/etc/ssh/test_host_ed25519_key";
        }
      ];
      environment.etc."ssh/test_host_ed25519_key" = {
        source = ./test-keys/host_ed25519;
        mode = "0600";
      };
      # The TEST-ONLY key the server rotates to, installed by the test script.
      environment.etc."nixcache-test/signing-2.secret" = {
        source = ./test-keys/signing-2.secret;
        mode = "0600";
      };

      # Rotation: the new key signs, the old one too, until clients moved.
      specialisation.rotated.configuration.services.nixcache.server = rotation;

      # Only the closures of the roots, through the channel alone.
      specialisation.published.configuration.services.nixcache.server.publishMode = "published";

      # Then `nixcache clients remove client`, and a rebuild.
      specialisation.revoked.configuration.services.nixcache.server = rotation // {
        registryFile = lib.mkForce ./registry-revoked.toml;
      };
    };

    client = {
      imports = [ clientNode ];
      # The registered TEST-ONLY key, in place before the key unit looks.
      system.activationScripts.nixcacheTestKey = ''
        install -D -m 0600 ${./test-keys/client_ed25519} /var/lib/nixcache/client/ssh_ed25519
        install -D -m 0600 ${./test-keys/pusher_ed25519} ${pushKeyFile}
      '';
      # Nix fetches from the local substituter, which holds one SSH
      # connection to the cache.
      specialisation.channel.configuration.services.nixcache.client.protocol = "nixcache";
      # The same, with the key whose role is push: root uploads through it.
      specialisation.push.configuration.services.nixcache.client = {
        protocol = "nixcache";
        sshKeyFile = pushKeyFile;
      };
    };

    # Same module, own key generated at boot, never registered. Under /root,
    # in a directory that does not exist yet: the confined key unit may
    # write there and nowhere else under /root.
    outsider = {
      imports = [ clientNode ];
      services.nixcache.client.sshKeyFile = "/root/.ssh/nixcache/ssh_ed25519";
    };
  };

  testScript =
    { nodes, ... }:
    let
      srv = nodes.server.services.nixcache.server;
      cli = nodes.client.services.nixcache.client;
      # The channel specialisation changes the protocol alone.
      local = "http://127.0.0.1:${toString cli.substituterPort}";
      outsiderKey = nodes.outsider.services.nixcache.client.sshKeyFile;
      gcRoots = srv.gcRootsDir;
      # The push client is the server's inline one with role push; the pull
      # client is the registry file's entry for the client's first key.
      pushName = lib.head (lib.attrNames (lib.filterAttrs (_: c: c.role == "push") srv.clients));
      clientKeyBlob = lib.elemAt (lib.splitString " " (lib.fileContents ./test-keys/client_ed25519.pub)) 1;
      pullName = lib.head (
        lib.attrNames (
          lib.filterAttrs (_: c: lib.hasInfix clientKeyBlob c.key) (builtins.fromTOML (builtins.readFile srv.registryFile)).clients
        )
      );
      pushedRoots = "${gcRoots}/pushed/${pushName}";
    in
    ''
      import json
      import shlex

      cache = "${cli.protocol}://${cli.user}@${cli.host}"
      authorized_keys = "/etc/ssh/authorized_keys.d/${srv.user}"


      def build(machine, name, out_link=None):
          link = f"--out-link {out_link}" if out_link else "--no-out-link"
          return machine.succeed(f"nix-build /etc/nixcache-test/derivation.nix --argstr name {name} {link}").strip()


      def sigs(machine, path):
          return machine.succeed(f"nix path-info --sigs {path}")


      # "is not signed by" (Nix 2.8), "as it's not signed by" (2.26): the common part.
      unsigned_message = "not signed by any of the keys in 'trusted-public-keys'"


      def substitute(machine, path, trust=None):
          """Realise path on machine from the cache alone; trust adds a key."""
          opts = f"--option extra-trusted-public-keys {shlex.quote(trust)}" if trust else ""
          return machine.execute(f"nix-store --realise {path} {opts} 2>&1")


      def copy_to_server(path):
          """Copy a path to the server the admin's way, unsigned, and root it."""
          export = client.succeed(f"nix-store --export {path} | base64 -w0")
          server.succeed(f"echo {export} | base64 -d | nix-store --import")
          name = path.split("-", 1)[1]
          server.succeed(f"nix-store --add-root ${gcRoots}/{name} --realise {path}")


      def switch(machine, specialisation=None):
          """Switch machine to a specialisation, or back to its own configuration."""
          top = f"/run/booted-system/specialisation/{specialisation}" if specialisation else "/run/booted-system"
          machine.succeed(f"{top}/bin/switch-to-configuration test >&2")


      def substituter_up():
          """The client's substituter (re)started, logged in, answering."""
          client.succeed("systemctl restart nixcache-substituter.service")
          client.wait_for_unit("nixcache-substituter.service")
          client.wait_until_succeeds("curl -sf ${local}/nix-cache-info", timeout=60)


      def hash_part(path):
          return path.split("/")[-1].split("-")[0]


      def audit_records():
          """The audit log's records: the publisher's JSON lines in its journal."""
          records = []
          for line in server.succeed("journalctl -u nixcache-publisher -o cat").splitlines():
              try:
                  record = json.loads(line)
              except ValueError:
                  continue
              if isinstance(record, dict):
                  records.append(record)
          return records


      def built_on_client_then_forgotten(name):
          """A path the client built unsigned, then deleted from its own store."""
          path = build(client, name)
          copy_to_server(path)
          client.succeed(f"nix-store --delete {path}")
          return path


      start_all()

      with subtest("the server makes its signing key at boot"):
          server.wait_for_unit("nixcache-keygen.service")
          server.succeed("test \"$(stat -c '%a %U' ${srv.secretKeyFile})\" = '600 root'")
          boot_key = server.succeed("cat ${srv.publicKeyFile}").strip()
          assert boot_key.startswith("${srv.keyName}:"), boot_key
          server.succeed("grep -q 'secret-key-files.*${srv.secretKeyFile}' /etc/nix/nix.conf")
          server.wait_for_unit("sshd.service")
          server.wait_for_open_port(22)

      with subtest("the key units run confined"):
          for unit in ["nixcache-keygen.service", "nixcache-sign.service"]:
              for prop, want in [("ProtectSystem", "strict"), ("PrivateNetwork", "yes"), ("NoNewPrivileges", "yes"), ("CapabilityBoundingSet", "")]:
                  got = server.succeed(f"systemctl show -P {prop} {unit}").strip()
                  assert got == want, f"{unit} {prop}={got}"

      with subtest("a secret key others can read stops the key unit, and the signer with it"):
          server.succeed("chmod 0644 ${srv.secretKeyFile}")
          server.fail("systemctl restart nixcache-keygen.service")
          server.succeed("journalctl -u nixcache-keygen.service | grep -F ${lib.escapeShellArg "${srv.secretKeyFile} has mode 0644, so others can read or change it; refusing to use it"}")
          out = server.fail("systemctl start nixcache-sign.service 2>&1")
          assert "dependency" in out, out
          # Made private again (no one read it in the test), it is used again.
          server.succeed("chmod 0600 ${srv.secretKeyFile}")
          server.succeed("systemctl restart nixcache-keygen.service")
          server.succeed("systemctl start nixcache-sign.service")
          server.succeed(f"test \"$(cat ${srv.publicKeyFile})\" = {shlex.quote(boot_key)}")

      with subtest("a path built on the server is signed"):
          # By the daemon, as it builds (secret-key-files): not yet published,
          # so the signer has not run for it.
          built = build(server, "built-on-server")
          assert "${srv.keyName}:" in sigs(server, built), sigs(server, built)
          server.succeed(f"nix-store --add-root ${gcRoots}/built-on-server --realise {built}")

      with subtest("the client pins the host key and never prompts"):
          client.wait_for_unit("nixcache-client-key.service")
          client.succeed("grep -qF ${lib.escapeShellArg hostKey} /etc/ssh/ssh_known_hosts")
          client.succeed(f"grep -qF {shlex.quote(cache)} /etc/nix/nix.conf")
          # (grep without -q reads all: an early exit would break nix's pipe.)
          client.succeed("nix config show | grep '^substituters = .*https://cache.nixos.org/'")

      with subtest("the client substitutes it and the signature verifies"):
          status, out = substitute(client, built, trust=boot_key)
          assert status == 0, out
          client.succeed(f"nix store verify --sigs-needed 1 --option extra-trusted-public-keys {shlex.quote(boot_key)} {built}")
          assert "${srv.keyName}:" in sigs(client, built)

      with subtest("the client refuses a path signed by a key it does not trust"):
          other = build(server, "signed-by-boot-key", "${gcRoots}/signed-by-boot-key")
          status, out = substitute(client, other)  # trusts only the rotated key
          assert status != 0 and unsigned_message in out, out
          client.fail(f"nix-store --check-validity {other}")

      with subtest("a path copied to the server unsigned gets signed once published, then substitutes"):
          copied = built_on_client_then_forgotten("copied-unsigned")  # publishing roots it
          server.wait_until_succeeds(f"nix path-info --sigs {copied} | grep -q '${srv.keyName}:'", timeout=120)
          status, out = substitute(client, copied, trust=boot_key)
          assert status == 0, out

      with subtest("protocol nixcache: the local substituter fetches a signed path over the channel"):
          client.succeed("/run/booted-system/specialisation/channel/bin/switch-to-configuration test >&2")
          client.wait_for_unit("nixcache-substituter.service")
          client.succeed("nix config show | grep '^substituters = ${local} https://cache.nixos.org/'")
          client.wait_until_succeeds("curl -sf ${local}/nix-cache-info", timeout=60)
          through = built_on_client_then_forgotten("through-the-channel")
          server.wait_until_succeeds(f"nix path-info --sigs {through} | grep -q '${srv.keyName}:'", timeout=120)
          # A miss is remembered for an hour by default: not while the
          # substituter may still be connecting.
          trust = f"--option extra-trusted-public-keys {shlex.quote(boot_key)}"
          client.wait_until_succeeds(f"nix-store --realise {through} {trust} --option narinfo-cache-negative-ttl 0", timeout=60)
          client.succeed(f"nix store verify --sigs-needed 1 {trust} {through}")

      with subtest("a pull key's upload is refused, and nothing changes on the server"):
          # Still the channel specialisation: the client's first key, role pull.
          refused = build(client, "refused-upload")
          status, out = client.execute(f"nixcache push --to ${local} {refused} 2>&1")
          assert status != 0 and "403" in out and "pull" in out, out
          status, out = client.execute(f"nix copy --to ${local} {refused} 2>&1")
          assert status != 0, out
          server.fail(f"nix-store --check-validity {refused}")
          server.fail("test -e ${gcRoots}/pushed/${pullName}")

      with subtest("a push key uploads a closure and a nix copy; the cache signs, imports and publishes them"):
          switch(client, "push")
          substituter_up()
          pushed = client.succeed("nix-build /etc/nixcache-test/closure.nix --argstr name pushed --no-out-link").strip()
          dep = client.succeed(f"nix-store --query --references {pushed}").strip()
          assert dep.endswith("-pushed-dep"), dep
          client.succeed(f"nixcache push --to ${local} --recursive {pushed} >&2")
          copied_up = build(client, "nix-copied")
          client.succeed(f"nix copy --to '${local}?compression=zstd' {copied_up} >&2")
          for path in [pushed, dep, copied_up]:
              server.succeed(f"nix-store --check-validity {path}")
              assert "${srv.keyName}:" in sigs(server, path), sigs(server, path)
              # Published: rooted under the client's own directory.
              target = server.succeed(f"readlink ${pushedRoots}/{path.split('/')[-1]}").strip()
              assert target == path, target
          # Pushing again proves nothing new and changes nothing.
          client.succeed(f"nixcache push --to ${local} --recursive {pushed} >&2")
          # Root uploads; a local user not in uploadUsers does not.
          theirs = build(client, "not-roots")
          status, out = client.execute(f"runuser -u nobody -- nixcache push --to ${local} {theirs} 2>&1")
          assert status != 0 and "403" in out, out
          server.fail(f"nix-store --check-validity {theirs}")

      with subtest("a pull client substitutes what was pushed, signed by the cache key"):
          switch(client, "channel")
          substituter_up()
          client.succeed(f"nix-store --delete {pushed} {dep} {copied_up}")
          trust = f"--option extra-trusted-public-keys {shlex.quote(boot_key)}"
          client.wait_until_succeeds(f"nix-store --realise {pushed} {copied_up} {trust} --option narinfo-cache-negative-ttl 0", timeout=60)
          for path in [pushed, dep, copied_up]:
              assert "${srv.keyName}:" in sigs(client, path), sigs(client, path)
          client.succeed(f"nix store verify --sigs-needed 1 {trust} {pushed} {dep} {copied_up}")

      with subtest("published mode: an unpublished path is not found; published ones are; nix-store --serve is refused"):
          # In mode all, ssh:// reads any valid path.
          client.succeed(f"nix path-info --store {cache} {built}")
          switch(server, "published")
          hidden = build(server, "not-published")  # signed by the daemon as it builds
          assert "${srv.keyName}:" in sigs(server, hidden)
          # A session runs the ForceCommand of the sshd that accepted its
          # connection: the substituter's connection predates the switch.
          substituter_up()
          code = client.succeed(f"curl -s -o /dev/null -w '%{{http_code}}' ${local}/{hash_part(hidden)}.narinfo")
          assert code == "404", code
          status, out = substitute(client, hidden, trust=boot_key)
          assert status != 0, out
          client.fail(f"nix-store --check-validity {hidden}")
          # Rooted by the admin, and pushed: still served.
          for path in [built, pushed]:
              client.succeed(f"curl -sf ${local}/{hash_part(path)}.narinfo")
          client.fail(f"nix path-info --store {cache} {built}")
          switch(server)

      with subtest("the audit log shows the push, the pull and the refusals"):
          records = audit_records()
          def logged(**want):
              return any(all(r.get(k) == v for k, v in want.items()) for r in records)
          for path in [pushed, dep, copied_up]:
              assert logged(client="${pushName}", role="push", op="upload", path=path, status=201), (path, records)
          assert logged(client="${pullName}", role="pull", op="nar", path=pushed, status=200), records
          assert logged(client="${pullName}", op="refused", request="upload", status=403), records
          assert logged(client="${pullName}", op="refused", request="nix-store --serve"), records
          # The summary, per client, skipping the publisher's other lines.
          server.succeed("journalctl -u nixcache-publisher -o cat | nixcache audit - >&2")
          summary = {c["client"]: c for c in json.loads(server.succeed("journalctl -u nixcache-publisher -o cat | nixcache audit - --json"))}
          assert summary["${pushName}"]["uploads"] >= 3 and summary["${pushName}"]["bytes_received"] > 0, summary
          assert summary["${pullName}"]["refusals"] >= 2 and summary["${pullName}"]["bytes_sent"] > 0, summary
          mine = json.loads(server.succeed("journalctl -u nixcache-publisher -o cat | nixcache audit - --client ${pushName} --json"))
          assert [c["client"] for c in mine] == ["${pushName}"], mine

      # Back to ssh://, for the stories that follow; the substituter stops.
      switch(client)
      client.fail("systemctl is-active nixcache-substituter.service")

      with subtest("the outsider is refused"):
          outsider.wait_for_unit("nixcache-client-key.service")
          # Made where it was asked for, by the confined unit.
          outsider.succeed("test \"$(stat -c '%a %U' ${outsiderKey})\" = '600 root'")
          pub = outsider.succeed("cat ${cli.sshPublicKeyFile}")
          server.fail(f"grep -qF {shlex.quote(pub.split()[1])} {authorized_keys}")
          status, out = outsider.execute("ssh ${cli.user}@${cli.host} true < /dev/null 2>&1")
          assert status == 255 and "Permission denied (publickey)" in out, out
          status, out = substitute(outsider, built, trust=boot_key)
          assert status != 0, out
          outsider.fail(f"nix-store --check-validity {built}")

      with subtest("an unsigned or foreign-signed path is refused by the client"):
          server.succeed("systemctl stop nixcache-sign.path nixcache-sign.timer")
          # is-active is false for a oneshot still activating: wait for the run.
          server.wait_until_succeeds("test \"$(systemctl show -P ActiveState nixcache-sign.service)\" != activating")
          unsigned = built_on_client_then_forgotten("stays-unsigned")
          foreign = built_on_client_then_forgotten("foreign-signed")
          server.succeed("nixcache keygen --name foreign-1 --secret-key-file /root/foreign.secret")
          server.succeed(f"nix store sign --key-file /root/foreign.secret {foreign}")
          # Making another key on the server leaves the published one alone.
          server.succeed(f"test \"$(cat ${srv.publicKeyFile})\" = {shlex.quote(boot_key)}")
          assert "${srv.keyName}:" not in sigs(server, unsigned) + sigs(server, foreign)
          for path in [unsigned, foreign]:
              status, out = substitute(client, path, trust=boot_key)
              assert status != 0 and unsigned_message in out, out
              client.fail(f"nix-store --check-validity {path}")
          # Signing resumes: the next run signs both, and they substitute.
          server.succeed("systemctl start nixcache-sign.path nixcache-sign.timer nixcache-sign.service")
          for path in [unsigned, foreign]:
              assert "${srv.keyName}:" in sigs(server, path)
              status, out = substitute(client, path, trust=boot_key)
              assert status == 0, out

      with subtest("a client cannot upload or build on the server"):
          mine = build(client, "client-only")
          client.fail(f"timeout 120 nix copy --to ssh://${cli.user}@${cli.host} {mine}")
          client.fail(f"timeout 120 nix copy --to ssh-ng://${cli.user}@${cli.host} {mine}")
          drv = client.succeed("nix-instantiate /etc/nixcache-test/derivation.nix --argstr name remote-build").strip()
          client.fail(f"timeout 120 nix-store --realise {drv} --max-jobs 0 --builders 'ssh://${cli.user}@${cli.host}'")
          status, out = client.execute("ssh ${cli.user}@${cli.host} id < /dev/null 2>&1")
          assert "uid=" not in out, out
          server.fail(f"nix-store --check-validity {mine}")
          server.succeed("! nix path-info --all | grep -e client-only -e remote-build")

      # A full `nix-store --gc` here would also delete every host store path
      # the VM sees but has not registered; deleting one path asks the
      # collector the same question.
      with subtest("garbage collection keeps what the cache serves"):
          for path in [built, other, copied]:
              roots = server.succeed(f"nix-store --query --roots {path}")
              assert "${gcRoots}/" in roots, roots
              out = server.fail(f"nix-store --delete {path} 2>&1")
              assert "still alive" in out, out
          unpublished = build(server, "unpublished")
          server.succeed(f"nix-store --delete {unpublished}")
          server.fail(f"nix-store --check-validity {unpublished}")

      with subtest("key rotation: signing with both keys, a client trusting only the new key substitutes"):
          server.succeed("install -m 0600 /etc/nixcache-test/signing-2.secret /var/lib/nixcache/secret-key-2")
          server.succeed("/run/booted-system/specialisation/rotated/bin/switch-to-configuration test >&2")
          server.succeed("test \"$(cat ${srv.publicKeyFile})\" = ${lib.escapeShellArg rotatedPublicKey}")
          server.wait_until_succeeds(f"nix path-info --sigs {other} | grep -q '${rotatedKeyName}:'", timeout=120)
          assert "${srv.keyName}:" in sigs(server, other)
          status, out = substitute(client, other)  # no extra key: the module's only
          assert status == 0, out
          client.succeed(f"nix store verify --sigs-needed 1 {other}")
          fresh = build(server, "after-rotation", "${gcRoots}/after-rotation")
          assert "${rotatedKeyName}:" in sigs(server, fresh) and "${srv.keyName}:" in sigs(server, fresh)

      with subtest("a client removed from the registry is refused after the server rebuilds"):
          last = build(server, "after-revocation", "${gcRoots}/after-revocation")
          server.succeed("/run/booted-system/specialisation/revoked/bin/switch-to-configuration test >&2")
          # Still the rotated key: revoking a client changes nothing else.
          server.succeed("test \"$(cat ${srv.publicKeyFile})\" = ${lib.escapeShellArg rotatedPublicKey}")
          server.fail(f"grep -q 'nixcache:client$' {authorized_keys}")
          server.succeed(f"grep -q 'nixcache:build-02$' {authorized_keys}")
          status, out = client.execute("ssh ${cli.user}@${cli.host} true < /dev/null 2>&1")
          assert status == 255 and "Permission denied (publickey)" in out, out
          status, out = substitute(client, last, trust=boot_key)
          assert status != 0, out
    '';
}
