"""The CLI is a shell: flags become library arguments, errors become documented exit codes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from builder import cli, env
from builder.errors import BuildError, CheckFailed
from builder.project import Project
from builder.resolve import MachineSources
from builder.store import Store
from tests.conftest import ROOT


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_build_passes_exactly_its_flags_to_the_library(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated: Path,
    tmp_path: Path,
) -> None:
    seen: dict[str, Any] = {}

    def fake_build(project: Project) -> env.BuildResult:
        seen.update(recipe=project.recipe, store=project.store, mode=project.options.mode,
                    offline=project.options.offline, machine=project.options.machine)
        return env.BuildResult("blake3:" + "0" * 64, Path("/store/envs/0"), True, "3.11.7", 1)

    monkeypatch.setattr(env, "build", fake_build)
    w1, w2, flag = (tmp_path / n for n in ("w1", "w2", "flag"))
    for folder in (w1, w2, flag):
        folder.mkdir()
    monkeypatch.setenv("REPRO_FIND_LINKS", f"{w1}:{w2}")
    code, out, _ = run(capsys, "build", "-r", str(ROOT), "--locked", "--offline", "--json")
    assert code == 0
    assert json.loads(out) == {"backend": "venv", "cached": True, "env": "blake3:" + "0" * 64,
                               "packages": 1,
                               "path": "/store/envs/0", "python": "3.11.7", "relocked": False,
                               "seconds": 0.0}
    assert seen["recipe"].path == ROOT / "repro.toml"
    assert seen["mode"] == "locked"
    assert seen["offline"] is True
    assert seen["machine"] == MachineSources((str(w1), str(w2)))
    assert seen["store"] == Store(isolated)
    # a flag beats the environment
    run(capsys, "build", "-r", str(ROOT), "--find-links", str(flag), "-q")
    assert seen["machine"] == MachineSources((str(flag),))
    # a folder that is not there is bad input, before anything is built
    code, _, err = run(capsys, "build", "-r", str(ROOT), "--find-links", "/nonexistent")
    assert code == 2
    assert "/nonexistent is not a folder" in err
    assert seen["mode"] == "auto"


@pytest.mark.parametrize(
    ("error", "code"),
    [(CheckFailed("stale", reasons=["x changed"]), 1), (BuildError("broke"), 3)],
)
def test_errors_map_to_exit_codes_and_one_json_object(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, error: Exception,
    code: int,
) -> None:
    def boom(*_: Any, **__: Any) -> None:
        raise error

    monkeypatch.setattr(env, "build", boom)
    got, out, err = run(capsys, "build", "-r", str(ROOT), "--json")
    assert got == code
    assert json.loads(out)["exit_code"] == code
    assert json.loads(out)["error"]["type"] == type(error).__name__
    assert err.startswith("error: ")


def test_usage_errors_are_bad_input_with_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "biuld")
    assert code == 2
    assert "no such command 'biuld' (did you mean 'build'?)" in err
    code, _, err = run(capsys, "build", "--locked", "--frozen", "-r", str(ROOT))
    assert code == 2
    assert "--locked and --frozen cannot be used together" in err
    code, _, err = run(capsys, "cache", "sl")
    assert code == 2
    assert "(did you mean 'ls'?)" in err


def test_help_documents_the_exit_codes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for line in ("0    success", "1    a check failed", "2    bad input", "3    an external tool",
                 "4    a bug in repro", "130  interrupted"):
        assert line in out


def test_exec_without_a_command_says_how(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "exec", "-r", str(ROOT))
    assert code == 2
    assert "no command given" in err
    assert "repro exec -- python" in err


def test_load_without_the_docker_extra_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
) -> None:
    import sys

    from builder.errors import InputError
    from builder.image.build import load_archive

    monkeypatch.setitem(sys.modules, "docker", None)  # as if `docker` were not installed
    with pytest.raises(InputError, match=r"(?s)needs the Docker SDK.*repro-builder\[docker\]"):
        load_archive(tmp_path / "image.tar")
