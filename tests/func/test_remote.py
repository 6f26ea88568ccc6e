"""The remote cache against the real CNCF registry (Debian's docker-registry) on loopback:
two stores sharing one registry, auth, trust, faults (through tests/func/faultproxy.py),
and listing and removal."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.func.bases import Registry, serve
from tests.func.faultproxy import FaultProxy
from tests.func.helpers import Result, complete_envs, repro

pytestmark = pytest.mark.skipif(shutil.which("docker-registry") is None,
                                reason="docker-registry (Debian package) is installed by .ci/run")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    with serve(tmp_path / "registry") as served:
        yield served


def clone(project: Path, where: Path) -> Path:
    """A fresh copy of the project, as another machine's checkout would be."""
    dest = where / "checkout"
    shutil.copytree(project, dest, ignore=shutil.ignore_patterns("model.npz", "metrics.json"))
    return dest


def big_model(project: Path, megabytes: int = 4) -> Path:
    """The project's training writes a model of `megabytes` MB (from the seed: the same
    bytes each time), so a push has a blob big enough to cut in the middle."""
    (project / "train.py").write_text(
        "import argparse, json, random\n"
        "p = argparse.ArgumentParser()\n"
        "for a in ('--data', '--lr', '--epochs', '--seed'): p.add_argument(a)\n"
        "args = p.parse_args()\n"
        "rng = random.Random(int(args.seed))\n"
        f"open('model.npz', 'wb').write(rng.randbytes({megabytes} << 20))\n"
        "json.dump({'accuracy': 1.0}, open('metrics.json', 'w'))\n")
    return project


def users(tmp_path: Path, password: str) -> Path:
    """An htpasswd file (bcrypt, by Apache's htpasswd) with the one user `ci`."""
    path = tmp_path / "htpasswd"
    path.write_text(subprocess.run(["htpasswd", "-Bbn", "ci", password], check=True,
                                   capture_output=True, text=True).stdout)
    return path


def store(tmp_path: Path, name: str) -> dict[str, str]:
    return {"REPRO_HOME": str(tmp_path / name)}


def pushed_run(project: Path, tmp_path: Path, registry: Registry, private: Path) -> Result:
    """The project trained in store `a` and pushed, signed with `private`."""
    a = repro("run", "--push", "--remote", registry.remote, "--sign-key", private, "--json",
              cwd=project, env=store(tmp_path, "a"))
    assert a.code == 0, a.err
    return a


def test_a_run_pushed_from_one_store_answers_in_another_without_training(
        project: Path, tmp_path: Path, registry: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    a = pushed_run(project, tmp_path, registry, private)
    assert a.json["source"] == "trained"
    assert a.json["pushed"]["blobs"] >= 6  # record, model, data, recipe, two lock files, code
    run_hex = a.json["run_key"].removeprefix("blake3:")
    model = a.json["outputs"][0]["digest"].removeprefix("blake3:")
    tags = registry.tags()
    assert f"run-{run_hex}" in tags and f"out-{model}" in tags
    assert any(t.startswith("out-sha256-") for t in tags)
    manifest = registry.manifest(f"run-{run_hex}")
    assert manifest["artifactType"] == "application/vnd.repro.run.v1"
    roles = sorted(x["annotations"]["dev.repro.role"] for x in manifest["layers"])
    assert roles == ["baseline", "code", "data", "lock", "output", "pylock", "recipe", "record"]
    assert manifest["annotations"]["dev.repro.signer"] == public

    checkout = clone(project, tmp_path / "b")
    b = repro("run", "--remote", registry.remote, "--trust", public, "--json", cwd=checkout,
              env=store(tmp_path, "b"))
    assert b.code == 0, b.err
    assert b.json["source"] == "remote"
    assert b.json["record"] == a.json["record"]  # A's record: nothing was trained again here
    assert complete_envs(tmp_path / "b") == []  # no environment was even built
    assert (checkout / "model.npz").read_bytes() == (project / "model.npz").read_bytes()

    again = repro("run", "--json", cwd=checkout, env=store(tmp_path, "b"))  # no remote now
    assert again.json["source"] == "local"

    c = store(tmp_path, "c")  # an empty store: which run made this file?
    found = repro("lookup", project / "model.npz", "--remote", registry.remote, "--trust",
                  public, "--json", cwd=checkout, env=c)
    assert found.code == 0, found.err
    assert found.json["runs"][0]["run_key"] == a.json["run_key"]
    assert found.json["runs"][0]["remote"] == registry.remote
    assert not Path(c["REPRO_HOME"], "runs").exists()  # a lookup pulls no model


def test_a_miss_costs_one_request_and_a_hit_moves_only_what_the_store_lacks(
        project: Path, tmp_path: Path, registry: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    with FaultProxy(registry.host) as proxy:
        remote = f"{proxy.host}/team/cache"
        missed = repro("lookup", "--remote", remote, "--json", cwd=project,
                       env=store(tmp_path, "a"))
        assert missed.code == 1
        assert [(m, s) for m, _, s in proxy.requests] == [("GET", 404)]
        assert "/manifests/run-" in proxy.requests[0][1]

        pushed = repro("run", "--push", "--remote", remote, "--sign-key", private, "--json",
                       cwd=project, env=store(tmp_path, "a"))
        assert pushed.code == 0, pushed.err
        repushed = repro("push", "--remote", remote, "--sign-key", private, "--json",
                         cwd=project, env=store(tmp_path, "a"))
        assert repushed.code == 0, repushed.err
        assert repushed.json["blobs"] == 0  # every blob was there: HEAD, not uploaded again
        assert repushed.json["skipped"] >= 6

        del proxy.requests[:]
        checkout = clone(project, tmp_path / "b")
        hit = repro("run", "--remote", remote, "--trust", public, "--json", cwd=checkout,
                    env=store(tmp_path, "b"))
        assert hit.json["source"] == "remote", hit.err
        blob_gets = [p for m, p, _ in proxy.requests if m == "GET" and "/blobs/" in p]
        assert len(blob_gets) == 2  # the record and the model; not the data, code or lock


def test_credentials_from_a_docker_config_and_from_a_helper_and_never_stored(
        project: Path, tmp_path: Path, key: tuple[Path, str]) -> None:
    password = "s3cret-Pa55word"  # noqa: S105
    htpasswd = users(tmp_path, password)
    with serve(tmp_path / "registry", htpasswd=htpasswd) as registry:
        _authenticated(project, tmp_path, registry, key, password)


def _authenticated(project: Path, tmp_path: Path, registry: Registry, key: tuple[Path, str],
                   password: str) -> None:
    private, public = key
    anonymous = repro("run", "--push", "--require-remote", "--remote", registry.remote,
                      "--sign-key", private, cwd=project, env=store(tmp_path, "a"))
    assert anonymous.code == 3
    assert "asks for a user name and password" in anonymous.err
    assert "docker login" in anonymous.err

    config = Path(os.environ["DOCKER_CONFIG"])
    auth = base64.b64encode(f"ci:{password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
    pushed = repro("run", "--push", "--require-remote", "--remote", registry.remote,
                   "--sign-key", private, "--json", cwd=project, env=store(tmp_path, "a"))
    assert pushed.code == 0, pushed.err
    assert pushed.json["pushed"]["blobs"] >= 6

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    helper = bin_dir / "docker-credential-repro-test"
    helper.write_text("#!/bin/sh\nread host\n"
                      f"echo '{{\"Username\": \"ci\", \"Secret\": \"{password}\"}}'\n")
    helper.chmod(0o755)
    (config / "config.json").write_text(json.dumps(
        {"credHelpers": {registry.host: "repro-test"}}))
    pulled = repro("run", "--remote", registry.remote, "--trust", public, "--json", "-v",
                   cwd=clone(project, tmp_path / "b"),
                   env={**store(tmp_path, "b"), "PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert pulled.code == 0, pulled.err
    assert pulled.json["source"] == "remote"

    forms = {password, auth, base64.b64encode(password.encode()).decode()}
    seen = [anonymous.out, anonymous.err, pushed.out, pushed.err, pulled.out, pulled.err]
    for home in ("a", "b"):
        seen += [p.read_bytes().decode("latin-1") for p in (tmp_path / home).rglob("*")
                 if p.is_file() and not p.is_symlink()]
    assert not [form for form in forms for text in seen if form in text]


def _served(project: Path, tmp_path: Path, remote: str, *flags: str,
            name: str = "b") -> dict:  # type: ignore[type-arg]
    r = repro("run", "--remote", remote, *flags, "--json", cwd=clone(project, tmp_path / name),
              env=store(tmp_path, name))
    assert r.code == 0, r.err
    return {**r.json, "err": r.err}


def test_only_runs_signed_by_a_trusted_key_are_served(
        project: Path, tmp_path: Path, registry: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    other = tmp_path / "keys" / "other.key"
    other_public = repro("key", "generate", other).out.strip().splitlines()[-1]
    pushed = repro("run", "--push", "--remote", registry.remote, "--sign-key", private,
                   cwd=project, env=store(tmp_path, "a"))
    assert pushed.code == 0, pushed.err

    untrusted = _served(project, tmp_path, registry.remote, "--trust", other_public, name="u")
    assert untrusted["source"] == "trained"
    assert "a key not trusted here: not used" in untrusted["err"]

    # the project's own config cannot trust anything: a pull request could write it
    checkout = clone(project, tmp_path / "p")
    (checkout / ".repro").mkdir()
    (checkout / ".repro/config.toml").write_text(
        f'[remote]\nurl = "{registry.remote}"\ntrust = "registry"\n'
        f'trusted-keys = ["{public}"]\n')
    r = repro("run", "--json", cwd=checkout, env=store(tmp_path, "p"))
    assert r.code == 0, r.err
    assert r.json["source"] == "trained"
    assert "is ignored" in r.err and "not trusted here" in r.err

    # the user's own config can: its key, or its remote's access control
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "repro"
    user.mkdir(parents=True)
    (user / "config.toml").write_text(f'[remote]\nurl = "{registry.remote}"\n'
                                      f'trusted-keys = ["{public}"]\n')
    assert _served(project, tmp_path, registry.remote, name="t")["source"] == "remote"


def test_unsigned_runs_are_served_only_where_the_user_trusts_the_registry(
        project: Path, tmp_path: Path, registry: Registry) -> None:
    pushed = repro("run", "--push", "--remote", registry.remote, cwd=project,
                   env=store(tmp_path, "a"))
    assert pushed.code == 0, pushed.err
    assert "nothing is signed" in pushed.err or "not signed" not in pushed.err
    unsigned = _served(project, tmp_path, registry.remote, name="u")
    assert unsigned["source"] == "trained"
    assert "is not signed: not used" in unsigned["err"]

    user = Path(os.environ["XDG_CONFIG_HOME"]) / "repro"
    user.mkdir(parents=True)
    (user / "config.toml").write_text(f'[remote]\nurl = "{registry.remote}"\n'
                                      'trust = "registry"\n')
    assert _served(project, tmp_path, registry.remote, name="r")["source"] == "remote"
    # the same trust does not follow a remote named elsewhere (another path on the host)
    assert _served(project, tmp_path, f"{registry.host}/other/cache",
                   name="o")["source"] == "trained"


def test_a_blob_swapped_on_the_registry_disk_is_never_served(
        project: Path, tmp_path: Path, registry: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    a = pushed_run(project, tmp_path, registry, private)
    manifest = registry.manifest("run-" + a.json["run_key"].removeprefix("blake3:"))
    model = next(x for x in manifest["layers"] if x["annotations"]["dev.repro.role"] == "output")
    on_disk = registry.blob_file(model["digest"])
    damaged = bytearray(on_disk.read_bytes())
    damaged[100] ^= 0xFF
    on_disk.write_bytes(bytes(damaged))

    b = _served(project, tmp_path, registry.remote, "--trust", public)
    assert b["source"] == "trained"
    assert "arrived as" in b["err"]
    objects = tmp_path / "b" / "objects"
    assert b["outputs"][0]["digest"] == a.json["outputs"][0]["digest"]  # trained: the same
    assert not [p for p in objects.rglob("*") if p.is_file() and p.read_bytes() == damaged]


def test_retries_after_errors_and_a_push_cut_mid_upload_leaves_no_run(
        project: Path, tmp_path: Path, registry: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    big_model(project)
    with FaultProxy(registry.host) as proxy:
        remote = f"{proxy.host}/team/cache"
        trained = repro("run", "--json", cwd=project, env=store(tmp_path, "a"))
        assert trained.code == 0, trained.err
        run_tag = "run-" + trained.json["run_key"].removeprefix("blake3:")

        proxy.throttle(2_000_000)
        proxy.cut_uploads(1_000_000)  # every upload over 1 MB is cut after 1 MB
        cut = repro("push", "--remote", remote, "--sign-key", private, "--json", cwd=project,
                    env=store(tmp_path, "a"))
        assert cut.code == 3, cut.err
        assert proxy.cut_at and all(1_000_000 <= n < 4 << 20 for n in proxy.cut_at)
        assert run_tag not in registry.tags()  # no manifest, so no reader takes it for done
        reader = _served(project, tmp_path, registry.remote, "--trust", public, name="r1")
        assert reader["source"] == "trained"

        proxy.clear()
        proxy.fail(503, 2)
        done = repro("push", "--remote", remote, "--sign-key", private, "--json", cwd=project,
                     env=store(tmp_path, "a"))
        assert done.code == 0, done.err
        assert [s for _, _, s in proxy.requests].count(503) == 2
        assert run_tag in registry.tags()
        proxy.fail(429, 2, retry_after=0)
        assert _served(project, tmp_path, remote, "--trust", public,
                       name="r2")["source"] == "remote"
        assert [s for _, _, s in proxy.requests].count(429) == 2

        proxy.down()
        checkout = clone(project, tmp_path / "d")
        offline = repro("run", "--remote", remote, "--json", cwd=checkout,
                        env=store(tmp_path, "d"))
        assert offline.code == 0, offline.err
        assert offline.json["source"] == "trained"
        assert "the remote" in offline.err and "training instead" in offline.err
        # asked to push, and the remote is down: the run stands (exit 0), and says so
        unpushed = repro("run", "--remote", remote, "--push", "--sign-key", private, "--json",
                         cwd=checkout, env=store(tmp_path, "d"))
        assert unpushed.code == 0, unpushed.err
        assert "pushed" not in unpushed.json
        assert "the run was not pushed" in unpushed.err and "repro push" in unpushed.err
        required = repro("run", "--no-cache", "--remote", remote, "--require-remote", "--push",
                         cwd=checkout, env=store(tmp_path, "d"))
        assert required.code == 3
        assert "--require-remote" in required.err


def test_env_layers_pushed_once_are_pulled_by_an_image_build_elsewhere(
        project: Path, tmp_path: Path, registry: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    a = repro("push", "--env", "--remote", registry.remote, "--sign-key", private, "--json",
              cwd=project, env=store(tmp_path, "a"))
    assert a.code == 0, a.err
    assert any(t.startswith("env-") for t in a.json["tags"])
    built_a = repro("build", "--image", "--json", cwd=project, env=store(tmp_path, "a"))

    checkout = clone(project, tmp_path / "b")
    built_b = repro("build", "--image", "--remote", registry.remote, "--trust", public,
                    "--json", "-o", tmp_path / "b-layout", cwd=checkout,
                    env={**store(tmp_path, "b"), "REPRO_OFFLINE": "1"})
    assert built_b.code == 0, built_b.err  # offline: uv could not have built a layer
    assert "from " + registry.remote in built_b.err
    assert built_b.json["image"] == built_a.json["image"]

    env_id = next(t for t in a.json["tags"] if t.startswith("env-")).removeprefix("env-")
    pulled = repro("pull", env_id, "--remote", registry.remote, "--trust", public, "--json",
                   cwd=checkout, env=store(tmp_path, "c"))
    assert pulled.code == 0, pulled.err
    assert pulled.json["pulled"] == ["blake3:" + env_id]
    built_c = repro("build", "--image", "--json", "-o", tmp_path / "c-layout", cwd=checkout,
                    env={**store(tmp_path, "c"), "REPRO_OFFLINE": "1"})
    assert built_c.code == 0, built_c.err
    assert built_c.json["cached_layers"] == len(built_c.json["layers"]) - 1  # all but code
    unsigned = repro("pull", env_id, "--remote", registry.remote, cwd=checkout,
                     env=store(tmp_path, "d"))
    assert unsigned.code == 1 and "a key not trusted here" in unsigned.err


def test_remote_ls_lists_and_rm_removes_what_is_older(
        project: Path, tmp_path: Path, registry: Registry, key: tuple[Path, str]) -> None:
    private, _ = key
    repro("run", "--push", "--remote", registry.remote, "--sign-key", private, cwd=project,
          env=store(tmp_path, "a"))
    listed = repro("remote", "ls", "--remote", registry.remote, "--json", cwd=project)
    assert listed.code == 0, listed.err
    # the model by BLAKE3 and sha256, and the record by its digest
    assert len(listed.json["run"]) == 1 and len(listed.json["out"]) == 3
    kept = repro("remote", "rm", "--older-than", "1", "--remote", registry.remote, "--json")
    assert kept.json["removed"] == []
    gone = repro("remote", "rm", "--older-than", "0", "--remote", registry.remote, "--json")
    assert gone.code == 0, gone.err
    assert len(gone.json["removed"]) == 4
    assert registry.tags() == []


def test_bad_remote_settings_are_named(project: Path, tmp_path: Path) -> None:
    bad = repro("run", "--remote", "team/cache", cwd=project)
    assert bad.code == 2
    assert "is not HOST[:PORT]/PATH" in bad.err
    trust = repro("run", "--remote", "localhost:1/x", "--trust", "ssh-ed25519 AAAA", cwd=project)
    assert trust.code == 2
    assert "is not an ed25519 public key" in trust.err
    user = Path(os.environ["XDG_CONFIG_HOME"]) / "repro"
    user.mkdir(parents=True)
    (user / "config.toml").write_text('[remote]\nurl = "localhost:1/x"\npush = "yes"\n')
    typed = repro("run", cwd=project)
    assert typed.code == 2
    assert "[remote] push must be a bool" in typed.err
    (user / "config.toml").write_text('[remote]\nurls = "localhost:1/x"\n')
    unknown = repro("run", cwd=project)
    assert "has no key `urls` (did you mean 'url'?)" in unknown.err
    nothing = repro("push")
    assert nothing.code == 2


def test_key_generate_writes_a_private_file_and_refuses_to_overwrite(tmp_path: Path) -> None:
    path = tmp_path / "k"
    made = repro("key", "generate", path, "--json")
    assert made.code == 0, made.err
    assert made.json["public_key"].startswith("repro-ed25519:")
    assert (path.stat().st_mode & 0o777) == 0o600
    before = path.read_bytes()
    again = repro("key", "generate", path)
    assert again.code == 2 and "never written over" in again.err
    assert path.read_bytes() == before


def test_the_repository_recipe_runs_from_the_remote_in_a_ci_like_job(
        tmp_path: Path, registry: Registry, key: tuple[Path, str]) -> None:
    """The commands docs/ci.md's cache jobs run, in two fresh stores (the CI runners)."""
    private, public = key
    checkout = tmp_path / "repo"
    checkout.mkdir()
    for name in ("repro.toml", "train.py", "lockfiles", "data"):
        src = ROOT / name
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, checkout / name)
    env = {"REPRO_REMOTE": registry.remote, "REPRO_SIGNING_KEY": str(private)}
    first = repro("run", "--push", "--require-remote", "--json", cwd=checkout,
                  env={**env, **store(tmp_path, "runner-1")})
    assert first.code == 0, first.err
    second = repro("run", "--require-remote", "--json", cwd=clone(checkout, tmp_path / "r2"),
                   env={"REPRO_REMOTE": registry.remote, "REPRO_TRUSTED_KEYS": public,
                        **store(tmp_path, "runner-2")})
    assert second.code == 0, second.err
    assert second.json["source"] == "remote"


def test_a_project_config_can_name_a_remote_but_not_push_to_it_or_get_your_password(
        project: Path, tmp_path: Path, key: tuple[Path, str]) -> None:
    password = "pr-cannot-see-this"  # noqa: S105
    htpasswd = users(tmp_path, password)
    with serve(tmp_path / "open") as open_registry, \
            serve(tmp_path / "locked", htpasswd=htpasswd) as locked:
        (project / ".repro").mkdir()
        config = project / ".repro" / "config.toml"
        config.write_text(f'[remote]\nurl = "{open_registry.remote}"\npush = true\n')
        secrets = {"REPRO_REGISTRY_USERNAME": "ci", "REPRO_REGISTRY_PASSWORD": password}
        r = repro("run", "--json", cwd=project, env={**store(tmp_path, "a"), **secrets})
        assert r.code == 0, r.err
        assert "nothing is pushed unless you say so" in r.err
        assert open_registry.tags() == []  # the project's code and data went nowhere

        config.write_text(f'[remote]\nurl = "{locked.remote}"\n')
        r = repro("run", "--seed", "8", "--json", cwd=project,
                  env={**store(tmp_path, "a"), **secrets})
        assert r.code == 0, r.err
        assert "asks for a user name and password, and none is configured" in r.err
        # the same variables do reach a remote the user named
        named = repro("run", "--seed", "8", "--push", "--remote", locked.remote, "--sign-key",
                      key[0], "--json", cwd=project, env={**store(tmp_path, "a"), **secrets})
        assert named.code == 0, named.err
        assert named.json["pushed"]["blobs"] >= 6


def test_an_unsigned_push_never_replaces_a_signed_run(
        project: Path, tmp_path: Path, registry: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    signed = repro("run", "--push", "--remote", registry.remote, "--sign-key", private,
                   "--json", cwd=project, env=store(tmp_path, "ci"))
    assert signed.code == 0, signed.err
    run_tag = "run-" + signed.json["run_key"].removeprefix("blake3:")
    before = registry.manifest(run_tag)
    other = clone(project, tmp_path / "dev")
    unsigned = repro("run", "--push", "--remote", registry.remote, "--json", cwd=other,
                     env=store(tmp_path, "dev"))
    assert unsigned.code == 0, unsigned.err
    assert "an unsigned push does not replace it" in unsigned.err
    assert registry.manifest(run_tag) == before
    assert _served(project, tmp_path, registry.remote, "--trust", public)["source"] == "remote"


def test_pull_all_pulls_every_trusted_run_past_an_untrusted_one(
        project: Path, tmp_path: Path, registry: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    other = tmp_path / "keys" / "other.key"
    repro("key", "generate", other)
    for seed, signer in ((1, private), (2, other), (3, private)):
        r = repro("run", "--seed", str(seed), "--push", "--remote", registry.remote,
                  "--sign-key", signer, cwd=project, env=store(tmp_path, "ci"))
        assert r.code == 0, r.err
    pulled = repro("pull", "--all", "--remote", registry.remote, "--trust", public, "--json",
                   cwd=tmp_path, env=store(tmp_path, "b"))
    assert pulled.code == 1
    assert len(pulled.json["pulled"]) == 2 and len(pulled.json["untrusted"]) == 1
    one = pulled.json["pulled"][0].removeprefix("blake3:")
    again = repro("pull", f"run-{one}", "--remote", registry.remote, "--trust", public,
                  "--json", cwd=tmp_path, env=store(tmp_path, "c"))
    assert again.code == 0, again.err


def test_which_run_made_a_file_by_its_sha256(
        project: Path, tmp_path: Path, registry: Registry, key: tuple[Path, str]) -> None:
    import hashlib

    private, public = key
    a = pushed_run(project, tmp_path, registry, private)
    sha = "sha256:" + hashlib.sha256((project / "model.npz").read_bytes()).hexdigest()
    found = repro("lookup", sha, "--remote", registry.remote, "--trust", public, "--json",
                  cwd=tmp_path, env=store(tmp_path, "b"))
    assert found.code == 0, found.err
    assert found.json["runs"][0]["run_key"] == a.json["run_key"]


def test_a_broken_credential_setup_is_a_warning_for_a_run(
        project: Path, tmp_path: Path) -> None:
    htpasswd = users(tmp_path, "pw")
    (Path(os.environ["DOCKER_CONFIG"]) / "config.json").write_text("{not json")
    with serve(tmp_path / "registry", htpasswd=htpasswd) as registry:
        r = repro("run", "--remote", registry.remote, "--json", cwd=project,
                  env=store(tmp_path, "a"))
    assert r.code == 0, r.err
    assert r.json["source"] == "trained"
    assert "cannot read the Docker config" in r.err
    leaked = repro("run", "--remote", "ci:hunter2@localhost:5000/x", cwd=project)
    assert leaked.code == 2 and "hunter2" not in leaked.err + leaked.out


def test_a_damaged_output_in_the_store_is_fetched_again_from_the_remote(
        project: Path, tmp_path: Path, registry: Registry, key: tuple[Path, str]) -> None:
    private, public = key
    pushed_run(project, tmp_path, registry, private)
    checkout = clone(project, tmp_path / "b")
    flags = ("--remote", registry.remote, "--trust", public, "--json")
    b = repro("run", *flags, cwd=checkout, env=store(tmp_path, "b"))
    assert b.json["source"] == "remote", b.err
    blob = Path(b.json["outputs"][0]["object"])
    blob.chmod(0o644)
    damaged = bytearray(blob.read_bytes())
    damaged[0] ^= 0xFF
    blob.write_bytes(bytes(damaged))
    (checkout / "model.npz").unlink()

    again = repro("run", *flags, cwd=checkout, env=store(tmp_path, "b"))
    assert again.code == 0, again.err
    assert "is damaged" in again.err and "asking the remote" in again.err
    assert again.json["source"] == "remote"  # fetched again, not trained
    assert (checkout / "model.npz").read_bytes() == (project / "model.npz").read_bytes()
