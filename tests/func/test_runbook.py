"""`repro runbook`: the runbooks of both examples, executed as written.

Each runbook's fenced `sh` blocks run in order in one bash (`-euo pipefail`), from an empty
folder, with a fresh store: repro is installed from a wheel built from this checkout (the
runbook's REPRO_PACKAGE), torch comes through the `--find-links` the runbook was written with.
Then every identity the runbook states is compared with what the commands made.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import MACHINE_WHEELS, ROOT
from tests.func.helpers import committed, repro

TORCH_WHEEL = Path(MACHINE_WHEELS or "/nonexistent") / \
    "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """repro-builder as a wheel, built from this checkout."""
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w",
                    str(out), str(ROOT)], check=True, capture_output=True)
    [built] = out.glob("repro_builder-*.whl")
    return built


def blocks(markdown: str) -> list[str]:
    return re.findall(r"^```sh\n(.*?)^```$", markdown, flags=re.M | re.S)


def stated(markdown: str) -> dict[str, str]:
    """The first `digest` of each row of the runbook's table of what each step gives."""
    rows = re.findall(r"^\| ([^|]+) \| `([^`]+)`", markdown, flags=re.M)
    return dict(rows)


def execute(markdown: str, where: Path, wheel: Path) -> subprocess.CompletedProcess[str]:
    where.mkdir()
    script = "\n".join(blocks(markdown))
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=where, text=True,
                          capture_output=True, check=False, timeout=900,
                          env={**os.environ, "REPRO_PACKAGE": str(wheel),
                               "REPRO_HOME": str(where / "store")})


def check(markdown: str, done: subprocess.CompletedProcess[str], project: Path,
          store: Path) -> None:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ": OK" in done.stdout  # sha256sum --check said so for each output
    want = stated(markdown)
    made = repro("show", "--json", cwd=project, env={"REPRO_HOME": str(store)})
    assert made.code == 0, made.err
    got = made.json
    assert want["run key"] == got["run_key"]
    assert want["env"] == got["env"]
    assert want["code"] == got["code"]["digest"]
    assert want["recipe"] == got["recipe"]["digest"]
    assert all(want[f"data.{n}"] == d["digest"] for n, d in got["data"].items())
    outputs = {f"output {o['path']}": o["digest"] for o in got["outputs"]}
    assert outputs and all(want[k] == v for k, v in outputs.items())


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="coreutils' sha256sum is missing")
def test_the_default_recipes_runbook_runs_as_written_and_gives_what_it_states(
        project: Path, tmp_path: Path, wheel: Path) -> None:
    committed(project)
    assert repro("run", cwd=project).code == 0
    assert repro("verify", cwd=project).code == 0
    book = tmp_path / "RUNBOOK.md"
    written = repro("runbook", "-o", book, "--json", cwd=project)
    assert written.code == 0, written.err
    text = book.read_text()
    assert "Last verified" in text and "no GPU" in text
    assert [b.splitlines()[0] for b in blocks(text)][:3] == [
        "python3.11 --version", "python3 -m venv .repro-tool", "git clone --quiet "
        f"{project} project"]
    fresh = tmp_path / "fresh"
    done = execute(text, fresh, wheel)
    check(text, done, fresh / "project", fresh / "store")


@pytest.mark.skipif(not TORCH_WHEEL.is_file(),
                    reason="the torch 2.13.0 CPU wheel is not in $PIP_FIND_LINKS here")
def test_the_torch_examples_runbook_runs_from_a_subfolder_with_the_machines_wheels(
        tmp_path: Path, wheel: Path) -> None:
    repo = tmp_path / "repo"
    example = shutil.copytree(ROOT / "examples" / "torch-mlp", repo / "examples" / "torch-mlp")
    (repo / "README.md").write_text("a team's repository\n")
    committed(repo)
    assert repro("run", "--find-links", MACHINE_WHEELS, cwd=example).code == 0
    written = repro("runbook", "--find-links", MACHINE_WHEELS, "--json", cwd=example)
    assert written.code == 0, written.err
    text = written.json["runbook"]
    assert f"repro build --locked --find-links {MACHINE_WHEELS}" in text
    assert "cd examples/torch-mlp" in text
    fresh = tmp_path / "fresh"
    done = execute(text, fresh, wheel)
    check(text, done, fresh / "project" / "examples" / "torch-mlp", fresh / "store")


def test_a_runbook_is_refused_where_a_fresh_machine_could_not_follow_it(
        project: Path, tmp_path: Path) -> None:
    none_yet = repro("runbook", cwd=project)
    assert none_yet.code == 2 and "has no recorded runs" in none_yet.err
    assert repro("run", cwd=project).code == 0
    no_git = repro("runbook", "--json", cwd=project)
    assert no_git.code == 2
    assert "was not made from a git commit" in no_git.json["error"]["message"]
    committed(project)  # the code as the run read it, now committed: HEAD is named
    later = repro("runbook", cwd=project)
    assert later.code == 0, later.err
    assert "The run was recorded outside git; commit" in later.out
    (project / "train.py").write_text("# changed\n" + (project / "train.py").read_text())
    changed = repro("runbook", cwd=project)
    assert changed.code == 2 and "no commit here holds its code" in changed.err
    assert repro("runbook", "-o", tmp_path / "no" / "RUNBOOK.md", cwd=project).code == 2
    (project / "train.py").write_text((project / "train.py").read_text().removeprefix(
        "# changed\n"))
    recipe = project / "repro.toml"
    recipe.write_text(recipe.read_text().replace(  # compared with a baseline, not by bytes
        'standard = "bitwise"', 'standard = "statistical"\n'
                                'tolerance = { accuracy = { abs = 0.01 } }'))
    (project / "lockfiles/digits-logreg/baseline.json").unlink()
    committed(project)
    assert repro("run", cwd=project).code == 0
    no_baseline = repro("runbook", cwd=project)
    assert no_baseline.code == 2 and "baseline.json is not in commit" in no_baseline.err
    assert repro("baseline", "set", cwd=project).code == 0
    committed(project)
    with_baseline = repro("runbook", cwd=project)
    assert with_baseline.code == 0, with_baseline.err
    assert "repro verify --locked" in with_baseline.out
    # the recipe committed, its lock not: a clone could not build this env
    subprocess.run(["git", "-C", project, "rm", "-q", "--cached", "-r", "lockfiles"], check=True)
    subprocess.run(["git", "-C", project, "-c", "user.name=t", "-c", "user.email=t@e.org",
                    "commit", "-qm", "no lock"], check=True)
    unlocked = repro("runbook", cwd=project)
    assert unlocked.code == 2, unlocked.err
    assert "pylock.toml is not in commit" in unlocked.err
    assert "commit lockfiles/digits-logreg/pylock.toml" in unlocked.err
    recipe.write_text(recipe.read_text().replace('"numpy>=2,<3"', '"numpy>=2,<3", "six"'))
    stale = repro("runbook", cwd=project)
    assert stale.code == 1 and "lock" in stale.err  # the commands say --locked
