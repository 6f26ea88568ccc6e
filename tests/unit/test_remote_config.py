"""Remote settings (flag, environment, project and user configs; trust only from the user),
credentials from the Docker config, and ed25519 signatures."""

from __future__ import annotations

import base64
import json
import logging
import os
from pathlib import Path

import pytest

from builder import config, credentials, signing
from builder.errors import InputError, RegistryError
from builder.remote import content_digest


def _user(text: str) -> None:
    path = config.user_config()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _project(root: Path, text: str) -> Path:
    (root / ".repro").mkdir(parents=True)
    (root / ".repro" / "config.toml").write_text(text)
    return root


def test_the_url_comes_from_the_flag_then_the_variable_then_the_project_then_the_user(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _user('[remote]\nurl = "user.example/cache"\npush = true\n')
    root = _project(tmp_path / "p", '[remote]\nurl = "project.example/cache"\n')
    assert config.settings(None).url == "user.example/cache"
    assert config.settings(None).push is True
    assert config.settings(root).url == "project.example/cache"
    assert config.settings(root).push is False  # push comes with the url's own table
    monkeypatch.setenv("REPRO_REMOTE", "env.example/cache")
    assert config.settings(root).url == "env.example/cache"
    chosen = config.settings(root, flag="flag.example/cache")
    assert (chosen.url, chosen.source) == ("flag.example/cache", "--remote")


def test_trust_is_never_read_from_the_project(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    key = signing.generate(tmp_path / "k")
    root = _project(tmp_path / "p", f'[remote]\nurl = "r.example/c"\ntrust = "registry"\n'
                                    f'trusted-keys = ["{key}"]\n')
    with caplog.at_level(logging.WARNING):
        got = config.settings(root)
    assert got.trusted == () and got.trust_registry is False
    assert "trust and trusted-keys: trust is read only from your own config" in caplog.text


def test_registry_trust_holds_for_the_users_own_remote_only(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    _user('[remote]\nurl = "r.example/team"\ntrust = "registry"\n')
    assert config.settings(None).trust_registry is True
    assert config.settings(None, flag="r.example/other").trust_registry is False


def test_trusted_keys_add_up_and_a_bad_one_is_named(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    a, b, c = (signing.generate(tmp_path / n) for n in "abc")
    _user(f'[remote]\ntrusted-keys = ["{a}"]\n')
    monkeypatch.setenv("REPRO_TRUSTED_KEYS", f" {b} ,")
    assert config.settings(None, trust=(c, a)).trusted == (a, c, b)
    with pytest.raises(InputError, match="is not an ed25519 public key"):
        config.settings(None, trust=("repro-ed25519:AAAA",))


def test_a_config_that_is_not_toml_names_its_file(tmp_path: Path) -> None:
    _user("[remote\n")
    with pytest.raises(InputError, match=r"config\.toml: cannot read it as TOML"):
        config.settings(None)
    _user('[remote]\ntrust = "everyone"\n')
    with pytest.raises(InputError, match='the one value is "registry"'):
        config.settings(None)


def test_docker_config_auths_helpers_and_variables(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = Path(os.environ["DOCKER_CONFIG"])
    auth = base64.b64encode(b"alice:pw:with:colons").decode()
    helper = tmp_path / "bin" / "docker-credential-mine"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread host\n[ "$host" = "h.example" ] || exit 1\n'
                      'echo \'{"Username": "bob", "Secret": "tok"}\'\n')
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    (folder / "config.json").write_text(json.dumps({
        "auths": {"https://a.example": {"auth": auth}}, "credHelpers": {"h.example": "mine"}}))
    assert credentials.for_host("a.example")[:2] == ("alice", "pw:with:colons")  # type: ignore[index]
    assert credentials.for_host("h.example")[:2] == ("bob", "tok")  # type: ignore[index]
    assert credentials.for_host("none.example") is None
    (folder / "config.json").write_text(json.dumps({"auths": {"HTTPS://A.example/v1/": {
        "auth": auth}}}))
    assert credentials.for_host("a.example")[:2] == ("alice", "pw:with:colons")  # type: ignore[index]
    monkeypatch.setenv("REPRO_REGISTRY_USERNAME", "ci")
    monkeypatch.setenv("REPRO_REGISTRY_PASSWORD", "x")
    assert credentials.for_host("a.example", variables=True)[:2] == ("ci", "x")  # type: ignore[index]
    # a host no user named (a recipe's base, a project's remote) never gets them
    assert credentials.for_host("a.example")[:2] == ("alice", "pw:with:colons")  # type: ignore[index]


def test_a_missing_helper_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    folder = Path(os.environ["DOCKER_CONFIG"])
    (folder / "config.json").write_text(json.dumps({"credsStore": "nowhere-xyz"}))
    with pytest.raises(RegistryError, match="docker-credential-nowhere-xyz is not on PATH"):
        credentials.for_host("a.example")


def test_a_signature_covers_the_identity_and_the_content_but_not_itself(tmp_path: Path) -> None:
    public = signing.generate(tmp_path / "k")
    signer = signing.load(tmp_path / "k")
    assert signer.public == public
    manifest = {"layers": [{"digest": "sha256:" + "1" * 64}], "annotations": {"a": "b"}}
    message = signing.fingerprint("run", "blake3:" + "2" * 64, content_digest(manifest))
    signature = signer.sign(message)
    signed = {**manifest, "annotations": {"a": "b", "dev.repro.signer": public,
                                          "dev.repro.signature": signature}}
    assert content_digest(signed) == content_digest(manifest)
    assert signing.verify(public, signature, message)
    changed = {**manifest, "layers": [{"digest": "sha256:" + "3" * 64}]}
    assert not signing.verify(public, signature, signing.fingerprint(
        "run", "blake3:" + "2" * 64, content_digest(changed)))
    assert not signing.verify(public, signature, signing.fingerprint(
        "env", "blake3:" + "2" * 64, content_digest(manifest)))
    other = signing.generate(tmp_path / "other")
    assert not signing.verify(other, signature, message)


def test_a_key_file_that_is_not_an_ed25519_key_is_named(tmp_path: Path) -> None:
    (tmp_path / "k").write_text("not a key")
    with pytest.raises(InputError, match="is not a PEM private key"):
        signing.load(tmp_path / "k")
    with pytest.raises(InputError, match="cannot read the signing key"):
        signing.load(tmp_path / "missing")


@pytest.mark.parametrize("doc", [
    [], {"schemaVersion": 2, "annotations": []}, {"schemaVersion": 2, "layers": {}},
    {"schemaVersion": 2, "layers": [{"annotations": {"a": 1}}]}, {"schemaVersion": 1},
])
def test_manifests_of_the_wrong_shape_are_not_read(doc: object) -> None:
    from builder.remote import _well_formed

    assert not _well_formed(doc)
    assert _well_formed({"schemaVersion": 2, "layers": [{"annotations": {"a": "b"}}],
                         "annotations": {"k": "v"}})


def test_a_helper_that_hangs_is_ended_with_what_it_started(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    helper = tmp_path / "bin" / "docker-credential-stuck"
    helper.parent.mkdir()
    helper.write_text("#!/bin/sh\nsleep 9876 &\nwait\n")
    helper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{helper.parent}:{os.environ['PATH']}")
    monkeypatch.setattr(credentials, "HELPER_TIMEOUT", 1)
    (Path(os.environ["DOCKER_CONFIG"]) / "config.json").write_text(
        json.dumps({"credsStore": "stuck"}))
    with pytest.raises(RegistryError, match="did not answer within 1 s"):
        credentials.for_host("a.example")
    left = subprocess.run(["pgrep", "-f", "sleep 9876"], capture_output=True, check=False)
    assert left.returncode == 1, left.stdout  # nothing left running
