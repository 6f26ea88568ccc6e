"""Exit codes that never lie: everything a user can cause ends in 2 (bad input) or 3 (a tool or
step failed) with a message and no traceback; a bug in repro ends in 4 with its traceback in a
log file; a closed output pipe in 141."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from builder import cli, env
from tests.func.helpers import Result, repro

pytestmark = pytest.mark.network


def clean(r: Result, code: int) -> str:
    """The run ended with `code`, said why on stderr, and showed no traceback."""
    assert r.code == code, r.err
    assert "Traceback" not in r.err
    assert r.err.startswith("error: ") or "\nerror: " in r.err, r.err
    return r.err


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_toml_nested_100000_deep_is_bad_input(project: Path) -> None:
    recipe = project / "repro.toml"
    recipe.write_text(recipe.read_text() + "\n[image]\nlabels = { x = " + "[" * 100_000
                      + "]" * 100_000 + " }\n")
    err = clean(repro("status", cwd=project), 2)
    assert f"{recipe}: not valid TOML: nested too deeply to read" in err


@pytest.mark.parametrize(("env_line", "message"), [
    ('env = { "A=B" = "1" }', "`train.env.A=B`: 'A=B' cannot name an environment variable"),
    ('env = { A = "x\\u0000y" }', "`train.env.A` holds a NUL character"),
    ('params = { "lr=2" = 1 }', "`train.params.lr=2`: 'lr=2' cannot name an environment"),
])
def test_variables_no_environment_can_hold_are_refused_with_the_key(
    project: Path, env_line: str, message: str,
) -> None:
    recipe = project / "repro.toml"
    edit(recipe, 'metrics = "metrics.json"', f'metrics = "metrics.json"\n{env_line}')
    if "params" in env_line:
        edit(recipe, "params = { lr = 0.5, epochs = 200 }\n", "")
        edit(recipe, '"--lr", "{params.lr}",\n           "--epochs", "{params.epochs}", ', "")
    err = clean(repro("run", cwd=project), 2)
    assert message in err


def test_an_argument_list_too_long_to_start_is_bad_input(project: Path) -> None:
    recipe = project / "repro.toml"
    names = [f"p{i}" for i in range(20_000)]
    value = "v" * 60
    params = ", ".join(f'{n} = "{value}"' for n in names)
    args = ", ".join(f'"--{n}={{params.{n}}}"' for n in names)
    text = recipe.read_text()
    text = text.replace("params = { lr = 0.5, epochs = 200 }", f"params = {{ {params} }}")
    text = text.replace('"--lr", "{params.lr}",\n           "--epochs", "{params.epochs}", ', "")
    text = text.replace('"--seed", "{seed}"]', f'"--seed", "{{seed}}", {args}]')
    recipe.write_text(text)
    err = clean(repro("run", cwd=project), 2)
    assert "the command line of python is too long to start: 200" in err  # (+ the sandbox's)
    assert " variables (" in err
    assert "… (20006 arguments)" in err  # the progress line does not print 1.4 MB of argv
    assert "keep large values in a file declared under [data]" in err
    assert len(err) < 4000
    assert "REPRO_PARAMS_FILE" in err


def test_a_directory_as_an_output_is_bad_input(project: Path) -> None:
    edit(project / "train.py", "    save_npz(args.out, {",
         "    __import__('os').makedirs(args.out)\n    save_npz('elsewhere.npz', {")
    err = clean(repro("run", cwd=project), 2)
    assert "the declared output model.npz is a directory; outputs are files" in err
    assert not (project / "model.npz").exists()  # it stayed in the run's sandbox
    (project / "model.npz").mkdir()  # there before the run: refused before anything runs
    err = clean(repro("run", cwd=project), 2)
    assert "model.npz is a directory" in err
    assert "Running" not in err


def test_a_record_whose_blob_is_gone_is_reported_never_a_traceback(
    project: Path, isolated: Path,
) -> None:
    first = repro("run", "--json", cwd=project)
    assert first.code == 0, first.err
    record = first.json["record"].removeprefix("blake3:")
    (isolated / "objects" / record[:2] / record[2:]).unlink()
    err = clean(repro("show", first.json["run_key"], cwd=project), 3)
    assert f"the store has no blob {first.json['record']}" in err
    assert "hint: run `repro cache verify`" in err
    listed = repro("runs", "--json", cwd=project)  # the others are listed; this one is named
    assert listed.code == 0, listed.err
    assert listed.json["runs"] == []
    assert f"warning: the store has no blob {first.json['record']}" in listed.err
    again = repro("run", "--json", cwd=project)  # the key's answer is gone: train again
    assert again.code == 0, again.err
    assert again.json["cached"] is False
    assert "warning: the store has no blob" in again.err


def test_a_closed_output_pipe_exits_141_quietly(project: Path) -> None:
    assert repro("run", "-q", cwd=project).code == 0
    child = subprocess.Popen([sys.executable, "-m", "builder", "runs"], cwd=project,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert child.stdout is not None and child.stderr is not None
    child.stdout.close()  # the reader is gone before repro writes, as after `| head -1`
    err = child.stderr.read().decode()
    child.stderr.close()
    assert child.wait() == 141
    assert err == ""
    # a reader that leaves part-way through a large output (an unbuffered stdout would
    # drop the rest of a short write without a word, and exit 0)
    train = project / "train.py"
    train.write_text(train.read_text().replace(
        '    save_npz(args.out, {', '    metrics.update({f"m{i}": i for i in range(20000)})\n'
                                   '    save_npz(args.out, {'))
    assert repro("run", "-q", cwd=project).code == 0
    shell = subprocess.run(  # noqa: S602  (a pipeline, as the user types it)
        f"{sys.executable} -m builder show --json | head -c1 >/dev/null; "
        "echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", cwd=project,
        capture_output=True, text=True, check=True)
    assert shell.stdout.strip() == "141", shell.stderr


@pytest.mark.skipif(shutil.which("mount") is None, reason="needs mount(8) for a small tmpfs")
def test_a_full_disk_while_storing_outputs_is_exit_3_and_nothing_half_written(
    project: Path, isolated: Path,
) -> None:
    objects = isolated / "objects"
    objects.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(objects)],
                             capture_output=True, text=True, check=False)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        edit(project / "train.py", "    save_npz(args.out, {",
             "    open('big.bin', 'wb').write(bytes(1 << 20))\n    save_npz(args.out, {")
        edit(project / "repro.toml", 'outputs = ["model.npz"]', 'outputs = ["model.npz", "big.bin"]')
        err = clean(repro("run", cwd=project), 3)
        assert "no space left on the device" in err
        leftovers = [p for p in objects.rglob("*") if p.is_file()]
        assert all(not p.name.startswith(".") for p in leftovers), leftovers  # no temp files
        assert (project / "data" / "train.csv").is_file()
    finally:
        subprocess.run(["umount", str(objects)], check=False)


def test_a_bug_exits_4_with_one_line_and_the_traceback_in_a_log(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, isolated: Path,
) -> None:
    from tests.conftest import ROOT

    def broken(*_: Any, **__: Any) -> None:
        return {}["no such key"]  # type: ignore[no-any-return]

    monkeypatch.setattr(env, "status", broken)
    code = cli.main(["status", "-r", str(ROOT)])
    out, err = capsys.readouterr()
    assert code == 4
    assert "Traceback" not in err
    first = err.splitlines()[0]
    assert first == "error: internal error (a bug in repro): KeyError: 'no such key'"
    logs = sorted((isolated / "logs").glob("crash-*.log"))
    assert len(logs) == 1
    assert f"the traceback is in {logs[0]}" in err
    text = logs[0].read_text()
    assert "Traceback (most recent call last)" in text
    assert "KeyError: 'no such key'" in text
    code = cli.main(["status", "-r", str(ROOT), "--json"])
    out, _ = capsys.readouterr()
    assert code == 4
    assert json.loads(out)["error"]["type"] == "InternalError"
