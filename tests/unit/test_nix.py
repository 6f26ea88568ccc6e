"""The Nix backend's command lines (nix-portable cannot be downloaded here, so its command
lines are checked as built), wheel choice, and how Nix's failures are explained."""

from __future__ import annotations

import base64
import platform
from pathlib import Path

import pytest

from builder import nix
from builder.errors import InputError, ToolError
from builder.pylock import Artefact, Package

FILES = "https://files.pythonhosted.org/packages/xx"


def test_nix_portable_prefixes_every_command_and_runs_the_env_from_its_home(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    portable = nix.Nix("nix-portable", ("nix-portable",))
    assert portable.argv("nix-build", "--option", "sandbox", "false", "DIR") == [
        "nix-portable", "nix-build", "--option", "sandbox", "false", "DIR"]
    assert portable.argv("nix-store", "--add-fixed", "sha256", "F.whl") == [
        "nix-portable", "nix-store", "--add-fixed", "sha256", "F.whl"]
    # its own store, its own build users: no build-users-group override
    assert portable.options() == ["--option", "sandbox", "false"]
    monkeypatch.setenv("NP_LOCATION", str(tmp_path))
    assert portable.real("/nix/store/abc-repro-env-x") == \
        tmp_path / ".nix-portable" / "nix" / "store" / "abc-repro-env-x"
    native = nix.Nix("nix-build")
    assert native.argv("nix-build", "DIR") == ["nix-build", "DIR"]
    assert native.real("/nix/store/abc") == Path("/nix/store/abc")


def test_nix_portable_is_used_when_it_alone_is_on_path(monkeypatch: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    (tmp_path / "nix-portable").write_text("#!/bin/sh\n")
    (tmp_path / "nix-portable").chmod(0o755)
    monkeypatch.setenv("PATH", str(tmp_path))
    assert nix.find() == nix.Nix("nix-portable", ("nix-portable",))
    (tmp_path / "nix-portable").unlink()
    with pytest.raises(ToolError) as caught:
        nix.find()
    assert caught.value.exit_code == 3
    assert "nix-portable" in caught.value.hint


def test_the_wheel_for_the_target_is_chosen_and_an_sdist_only_package_refused() -> None:
    linux = Artefact(f"{FILES}/numpy-2.4.6-cp311-cp311-manylinux_2_28_x86_64.whl", "a" * 64)
    mac = Artefact(f"{FILES}/numpy-2.4.6-cp311-cp311-macosx_14_0_arm64.whl", "b" * 64)
    both = Package("numpy", "2.4.6", wheels=(mac, linux))
    assert nix._wheel(both, "3.11", "linux/x86_64", Path("pylock.toml")) == linux
    assert nix._wheel(both, "3.11", "macos/arm64", Path("pylock.toml")) == mac
    # as pip and uv choose: the best tag, not the first wheel (protobuf ships both)
    abi3 = Artefact(f"{FILES}/protobuf-7.36.2-cp310-abi3-manylinux2014_x86_64.whl", "d" * 64)
    pure = Artefact(f"{FILES}/protobuf-7.36.2-py3-none-any.whl", "e" * 64)
    musl = Artefact(f"{FILES}/protobuf-7.36.2-cp310-abi3-musllinux_1_1_x86_64.whl", "f" * 64)
    protobuf = Package("protobuf", "7.36.2", wheels=(pure, musl, abi3))
    if platform.machine() == "x86_64" and platform.libc_ver()[0] == "glibc":
        assert nix._wheel(protobuf, "3.11", "linux/x86_64", Path("pylock.toml")) == abi3
    sdist_only = Package("pyyaml", "6.0.2", sdist=Artefact(f"{FILES}/pyyaml-6.0.2.tar.gz",
                                                           "c" * 64))
    with pytest.raises(InputError) as caught:
        nix._wheel(sdist_only, "3.11", "linux/x86_64", Path("lockfiles/x/pylock.toml"))
    assert str(caught.value).startswith("lockfiles/x/pylock.toml: pyyaml 6.0.2 has only an "
                                        "sdist in the lock")
    assert caught.value.exit_code == 2


def test_sri_is_the_base64_of_the_digest() -> None:
    hexdigest = "481caa481374e813c1b176ada14e97f1f67a4539ce9cfeb3f350d78d6370c2e8"
    assert nix.sri(hexdigest) == "sha256-SByqSBN06BPBsXatoU6X8fZ6RTnOnP6z81DXjWNwwug="
    assert base64.b64decode(nix.sri(hexdigest)[7:]).hex() == hexdigest


def test_a_store_this_user_cannot_write_is_named_with_the_user() -> None:
    # what Nix 2.8 said, run as nobody against root's /nix (captured here)
    stderr = ("error: could not set permissions on '/nix/var/nix/profiles/per-user' to 755: "
              "Operation not permitted\n")
    explained = nix._explained(ToolError(["nix-build", "DIR"], 1, stderr))
    assert "the Nix store /nix/store cannot be written by user" in explained.hint
    assert "nix-portable" in explained.hint


def test_a_hash_mismatch_says_the_lock_was_edited() -> None:
    stderr = ("error: hash mismatch in fixed-output derivation '/nix/store/x.drv':\n"
              "         specified: sha256-AAAA\n            got:    sha256-BBBB\n")
    explained = nix._explained(ToolError(["nix-build", "DIR"], 1, stderr))
    assert "hash mismatch" in str(explained)
    assert "restore lockfiles/ from version control" in explained.hint


def test_the_shipped_expressions_are_the_checkouts() -> None:
    root = Path(__file__).resolve().parents[2]
    assert nix.sources() == {name: (root / "nix" / name).read_bytes() for name in nix.FILES}


@pytest.mark.parametrize(("name", "stored"), [("digits-logreg", "digits-logreg"),
                                              ("t14.drv", "t14-drv"), (".x", "x")])
def test_a_recipe_name_becomes_a_derivation_name_nix_accepts(name: str, stored: str) -> None:
    assert nix._store_name(name) == stored

