# repro's Nix environment for one lock: `repro export nix -o DIR` writes this file, the
# builder install-wheels.py and lock.json (the lock as data) into DIR.
#
# Build it by hand from DIR (no nixpkgs needed; every wheel is a fixed-output fetch of the
# lock's URL, checked against the lock's sha256):
#
#   nix-build DIR --option sandbox false
#
# The interpreter is lock.json's `interpreter`, the host's, so the sandbox must be off (it
# is named as an impurity). As root without a `nixbld` group (Debian's nix-bin without its
# daemon) add `--option build-users-group ""`. Another interpreter, by path or from nixpkgs:
#
#   nix-build DIR --option sandbox false --argstr python /usr/bin/python3.11
#   nix-build DIR --arg python '(import <nixpkgs> {}).python311'
#
# (From nixpkgs, manylinux wheels that link libraries outside the wheel, such as libstdc++,
# need those found: see docs/nix.md.) A wheel that cannot be fetched from where you are (a
# machine's wheel folder) goes in first by its hash: `nix-store --add-fixed sha256 FILE`.
# The result is laid out as a virtualenv: DIR/result/bin/python.
{ lock ? builtins.fromJSON (builtins.readFile ./lock.json)
, python ? lock.interpreter
}:

let
  fetch = wheel: import <nix/fetchurl.nix> {
    url = wheel.url;
    hash = wheel.hash;
    name = wheel.filename; # the URL's last part may be %-quoted, which a store path refuses
  };
  interpreter =
    if builtins.isString python then python
    else "${python}/bin/python${lock.python}";
in
derivation {
  name = "repro-env-${lock.recipe}";
  system = lock.system;
  builder = interpreter;
  args = [ "-I" "-S" ./install-wheels.py ];
  inherit interpreter;
  wheels = map fetch lock.wheels;
  # the lock this env is: in the derivation, so the store path follows the env id
  reproEnv = lock.env;
  PYTHONHASHSEED = "0"; # bytecode of set constants has one order
  PYTHONDONTWRITEBYTECODE = "1";
}
