{
  lib,
  buildGoModule,
  nix,
  openssh,
  # The flake passes its revision, so `nixcache --version` names the commit.
  rev ? null,
}:

buildGoModule (finalAttrs: {
  pname = "nixcache";
  version = "0.1.0" + lib.optionalString (rev != null) "+${rev}";

  src = lib.fileset.toSource {
    root = ../.;
    fileset = lib.fileset.unions [
      ../go.mod
      ../go.sum
      ../vendor
      ../cmd
      ../internal
    ];
  };

  # vendor/ is committed (CI checks it is what `go mod vendor` makes), so the
  # build needs no network and no vendorHash.
  vendorHash = null;

  subPackages = [ "cmd/nixcache" ];

  env.CGO_ENABLED = "0";

  ldflags = [
    "-s"
    "-w"
    "-X main.version=${finalAttrs.version}"
  ];

  # The unit tests, as the build user: `go test ./...` leaves out the tests
  # that need root, a running nix-daemon and sshd (build tag `harness`), which
  # run in the repository's suite (scripts/test.sh) and whose behaviour the
  # VM test covers. The nix.conf reader is compared with this `nix`, the ssh
  # config with this `ssh -G`.
  nativeCheckInputs = [
    nix
    openssh
  ];
  checkPhase = ''
    runHook preCheck
    go test -count=1 ./...
    runHook postCheck
  '';

  meta = {
    description = "Private Nix binary cache served over SSH";
    longDescription = ''
      nixcache runs a private Nix binary cache over SSH: Nix-compatible
      signing keys, signing and verifying store paths through the Nix daemon,
      a registry of client keys rendered into read-only authorized_keys, and
      onboarding (`nixcache client join`) and diagnosis (`nixcache client
      doctor`) of client machines. Its NixOS modules configure both sides.
    '';
    homepage = "https://github.com/nixcache/nixcache";
    license = lib.licenses.mit;
    maintainers = [ ];
    mainProgram = "nixcache";
    platforms = lib.platforms.linux ++ lib.platforms.darwin;
  };
})
