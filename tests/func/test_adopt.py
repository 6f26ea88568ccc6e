"""`repro audit` and `repro init` on projects repro did not write: training scripts each
flawed in one way (every finding with its file and line), and two typical projects that
`repro init` makes runnable without edits."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from builder.audit import audit
from tests.conftest import MACHINE_WHEELS, ROOT, gen
from tests.func.helpers import committed, repro

RECIPE = """[recipe]
name = "fixture"
schema = 1

[environment]
python = "3.11"
dependencies = ["numpy"]

[code]
include = ["*.py"]

[train]
command = ["python", "train.py"]
outputs = [{outputs}]
"""

FLAWED = {
    # name: (train.py, the finding it must give: code, line)
    "numpy-legacy": ("import numpy as np\n\n\ndef main():\n    w = np.random.randn(3)\n",
                     ("unseeded-numpy", 5)),
    "numpy-rng": ("import numpy as np\nrng = np.random.default_rng()\n",
                  ("unseeded-numpy", 2)),
    "stdlib-random": ("import random\nitems = [1, 2, 3]\nrandom.shuffle(items)\n",
                      ("unseeded-random", 3)),
    "torch-unseeded": ("import torch\n\nmodel = torch.nn.Linear(2, 2)\n",
                       ("unseeded-torch", 3)),
    "loader-workers": ("import torch\nfrom torch.utils.data import DataLoader\n"
                       "torch.manual_seed(0)\n"
                       "loader = DataLoader(list(range(10)), batch_size=2, shuffle=True,\n"
                       "                    num_workers=4)\n", ("unseeded-workers", 4)),
    "cudnn-benchmark": ("import torch\ntorch.manual_seed(1)\n"
                        "torch.backends.cudnn.benchmark = True\n", ("cudnn-benchmark", 3)),
    "undeclared-file": ("import csv\n\nwith open('data/train.csv') as f:\n"
                        "    rows = list(csv.reader(f))\n", ("undeclared-data", 3)),
    "argparse-default": ("import argparse\np = argparse.ArgumentParser()\n"
                         "p.add_argument('--data', default='data/train.csv')\n",
                         ("undeclared-data", 3)),
    "download": ("import urllib.request\n\n"
                 "urllib.request.urlretrieve('https://example.org/x.csv', 'x.csv')\n",
                 ("runtime-download", 3)),
    "hard-coded-lr": ("import torch\ntorch.manual_seed(0)\nmodel = torch.nn.Linear(2, 1)\n"
                      "opt = torch.optim.SGD(model.parameters(), lr=0.1)\n",
                      ("hard-coded-param", 4)),
    "hard-coded-epochs": ("epochs = 40\nfor _ in range(epochs):\n    pass\n",
                          ("hard-coded-param", 1)),
    "tensorflow": ("import tensorflow as tf\n\nx = tf.random.normal([3])\n",
                   ("unseeded-tensorflow", 3)),
    "jax-time": ("import time\nimport jax\n\nkey = jax.random.PRNGKey(int(time.time()))\n",
                 ("jax-key-from-time", 4)),
}


@pytest.mark.parametrize("name", sorted(FLAWED))
def test_each_flaw_is_found_with_its_file_and_line(name: str, tmp_path: Path) -> None:
    code, (kind, line) = FLAWED[name]
    project = gen(tmp_path / name, {"train.py": code, "data": {"train.csv": "1,2\n"}})
    found = audit(project)
    assert (kind, "train.py", line) in {(f.code, f.file, f.line) for f in found}, found
    finding = next(f for f in found if f.code == kind)
    assert finding.fix  # every finding says what to do
    others = {f.code for f in found if f.file == "train.py"} - {kind}
    assert not others - {"hard-coded-param", "nondeterministic-ops"}, found


def test_a_tensorboard_folder_among_the_outputs_is_found(tmp_path: Path) -> None:
    project = gen(tmp_path / "tb", {
        "repro.toml": RECIPE.format(outputs='"runs"'),
        "train.py": "import torch\nfrom torch.utils.tensorboard import SummaryWriter\n"
                    "torch.manual_seed(0)\nwriter = SummaryWriter('runs')\n"})
    found = audit(project)
    assert ("varying-output", "train.py", 4) in {(f.code, f.file, f.line) for f in found}


def test_an_import_the_lock_lacks_is_found(project: Path) -> None:
    train = project / "train.py"
    train.write_text("import pandas\n" + train.read_text())
    found = audit(project)
    hit = next(f for f in found if f.code == "unlocked-import")
    assert (hit.file, hit.line, hit.severity) == ("train.py", 1, "high")
    assert "'pandas'" in hit.fix


CHARMODEL = '''"""A character-level model written like a third-party one: its own --seed flag, a
DataLoader with workers seeded through a generator, a tensorboard writer."""
import argparse
import os

import torch
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.tensorboard import SummaryWriter


def seed_worker(worker_id):
    torch.manual_seed(torch.initial_seed() % 2**32)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--input-file", "-i", type=str, default="names.txt")
    parser.add_argument("--work-dir", "-o", type=str, default="out")
    parser.add_argument("--seed", type=int, default=3407)
    parser.add_argument("--max-steps", type=int, default=-1)
    parser.add_argument("--num-workers", type=int, default=2)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    os.makedirs(args.work_dir, exist_ok=True)
    writer = SummaryWriter(log_dir=args.work_dir)
    words = open(args.input_file).read().split()
    data = TensorDataset(torch.arange(len(words)))
    g = torch.Generator()
    g.manual_seed(args.seed)
    loader = DataLoader(data, batch_size=4, shuffle=True, num_workers=args.num_workers,
                        worker_init_fn=seed_worker, generator=g)
    model = torch.nn.Embedding(len(words), 8)
    for step, (batch,) in enumerate(loader):
        if step == args.max_steps:
            break
        writer.add_scalar("loss", float(model(batch).sum()), step)
    out_path = os.path.join(args.work_dir, "model.pt")
    torch.save(model.state_dict(), out_path)


if __name__ == "__main__":
    main()
'''


def test_a_properly_seeded_third_party_style_script_has_no_high_finding(
        tmp_path: Path) -> None:
    project = gen(tmp_path / "charmodel", {"train.py": CHARMODEL, "names.txt": "emma\nolivia\n"})
    code_findings = [f for f in audit(project) if f.file == "train.py"]
    assert not [f for f in code_findings if f.severity == "high"], code_findings


@pytest.mark.parametrize("where", [".", "examples/torch-mlp"])
def test_the_repositorys_own_examples_are_clean(where: str) -> None:
    found = audit(ROOT / where)
    assert not [f for f in found if f.severity in ("high", "medium")], found


def test_init_writes_a_recipe_from_the_flags_and_never_overwrites(tmp_path: Path) -> None:
    project = gen(tmp_path / "charmodel", {"train.py": CHARMODEL, "names.txt": "emma\nolivia\n",
                                           "requirements.txt": "torch==2.13.0\ntensorboard\n"})
    written = repro("init", "--json", cwd=project)
    assert written.code == 0, written.err
    info = written.json
    assert info["entry"] == "train.py"
    assert info["data"] == {"input_file": "names.txt"}
    assert info["outputs"] == ["out/model.pt"]
    assert info["params"]["max_steps"] == 1000  # -1 would run forever: said in a comment
    assert any("--max-steps defaults to -1" in n for n in info["notes"])
    assert "torch==2.13.0+cpu" in info["dependencies"]
    text = (project / "repro.toml").read_text()
    assert '"--seed",\n    "{seed}"' in text or '"--seed", "{seed}"' in text
    assert "seed = 3407" in text
    assert 'url = "https://download.pytorch.org/whl/cpu"' in text
    assert "DECIDE" in text
    # a recipe is there: nothing changes without --force
    again = repro("init", cwd=project)
    assert again.code == 2
    assert "changes nothing in a project that has a recipe" in again.err
    assert (project / "repro.toml").read_text() == text


def test_audit_gates_ci_by_severity(tmp_path: Path) -> None:
    project = gen(tmp_path / "p", {"train.py": FLAWED["hard-coded-epochs"][0]})
    assert repro("audit", project).code == 1  # no recipe, not in git: high
    low = repro("audit", project, "--fail-on", "low", "--json")
    assert low.code == 1
    assert low.json["counts"]["low"] >= 1 and low.json["failed"] is True


SCRIPT_A = '''import argparse

import numpy as np
import torch


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--data", default="data/points.csv")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--steps", type=int, default=30)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    xy = torch.tensor(np.loadtxt(args.data, delimiter=","), dtype=torch.float32)
    model = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr)
    for _ in range(args.steps):
        opt.zero_grad()
        loss = ((model(xy[:, :1]) - xy[:, 1:]) ** 2).mean()
        loss.backward()
        opt.step()
    torch.save(model.state_dict(), "model.pt")


if __name__ == "__main__":
    main()
'''

SCRIPT_B = '''import argparse

import joblib
import numpy as np
from sklearn.linear_model import LogisticRegression


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--train", default="data/train.csv")
    p.add_argument("--c", type=float, default=1.0)
    p.add_argument("--random-seed", type=int, default=0)
    args = p.parse_args()
    rows = np.loadtxt(args.train, delimiter=",")
    model = LogisticRegression(C=args.c, random_state=args.random_seed)
    model.fit(rows[:, :-1], rows[:, -1])
    joblib.dump(model, "model.joblib")


if __name__ == "__main__":
    main()
'''


def _runs_without_edits(project: Path, *flags: str) -> None:
    assert repro("init", cwd=project).code == 0
    committed(project)
    locked = repro("lock", *flags, cwd=project)
    assert locked.code == 0, locked.err
    ran = repro("run", *flags, "--json", cwd=project)
    assert ran.code == 0, ran.err
    assert ran.json["outputs"]
    committed(project)  # the lock, as a user would commit it
    gate = repro("audit", "--fail-on", "high", "--json", cwd=project)
    assert gate.code == 0, gate.out


@pytest.mark.network
@pytest.mark.skipif(not (Path(MACHINE_WHEELS or "/nonexistent") /
                         "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl").is_file(),
                    reason="the torch CPU wheel is not in $PIP_FIND_LINKS on this machine")
def test_init_lock_run_on_a_requirements_txt_torch_project(tmp_path: Path) -> None:
    points = "".join(f"{x / 10},{2 * x / 10 + 1}\n" for x in range(20))
    project = gen(tmp_path / "linear", {"train.py": SCRIPT_A, "data": {"points.csv": points},
                                        "requirements.txt": "torch==2.13.0\nnumpy>=2\n"})
    _runs_without_edits(project, "--find-links", MACHINE_WHEELS)
    assert (project / "model.pt").is_file()


@pytest.mark.network
def test_init_lock_run_on_a_pyproject_sklearn_project(tmp_path: Path) -> None:
    rows = "".join(f"{x},{x % 7},{int(x > 10)}\n" for x in range(24))
    project = gen(tmp_path / "sk", {
        "train.py": SCRIPT_B, "data": {"train.csv": rows},
        "pyproject.toml": '[project]\nname = "sk"\nversion = "0.1"\n'
                          'dependencies = ["numpy>=2", "scikit-learn>=1.5"]\n'})
    _runs_without_edits(project)
    assert (project / "model.joblib").is_file()
    assert shutil.which("git")


def test_a_seed_in_a_test_helper_does_not_hide_the_entry_points_unseeded_draws(
        tmp_path: Path) -> None:
    project = gen(tmp_path / "p", {
        "train.py": "import random\n\nimport numpy as np\n\n\nif __name__ == '__main__':\n"
                    "    w = np.random.rand(3)\n    random.shuffle([1, 2])\n",
        "tests": {"conftest.py": "import random\n\nimport numpy as np\n\nrandom.seed(0)\n"
                                 "np.random.seed(0)\n"}})
    found = {(f.code, f.file, f.line) for f in audit(project)}
    assert ("unseeded-numpy", "train.py", 7) in found
    assert ("unseeded-random", "train.py", 8) in found


def test_init_reads_poetry_required_flags_data_the_code_names_and_saves_through_flags(
        tmp_path: Path) -> None:
    script = ("import argparse\n\nimport numpy as np\n\n\ndef main():\n"
              "    p = argparse.ArgumentParser()\n"
              "    p.add_argument('--run-name', required=True)\n"
              "    p.add_argument('--weights', default='weights.npy')\n"
              "    p.add_argument('--data-seed', type=int, default=11)\n"
              "    p.add_argument('--seed', type=int, default=5)\n"
              "    p.add_argument('--network', default='mlp')\n"
              "    a = p.parse_args()\n"
              "    xy = np.loadtxt('inputs/xy.csv', delimiter=',')\n"
              "    np.save(a.weights, xy.sum(axis=0))\n\n\n"
              "if __name__ == '__main__':\n    main()\n")
    project = gen(tmp_path / "p", {
        "fit.py": script, "inputs": {"xy.csv": "1,2\n3,4\n"},
        "pyproject.toml": '[tool.poetry]\nname = "p"\n\n[tool.poetry.dependencies]\n'
                          'python = "^3.11"\nnumpy = "^1.26"\nscikit-learn = "1.5.2"\n'})
    info = repro("init", "--json", cwd=project).json
    assert info["dependencies"] == ["numpy>=1.26,<2", "scikit-learn==1.5.2"]
    assert info["outputs"] == ["weights.npy"]
    assert info["data"] == {"xy": "inputs/xy.csv"}
    assert info["params"] == {"run_name": "run_name", "data_seed": 11, "network": "mlp"}
    assert any("--run-name is required" in n for n in info["notes"])
    text = (project / "repro.toml").read_text()
    assert "seed = 5" in text


SRC_MAIN = '''import argparse

import numpy as np

from .model import fit


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data", default="data/xy.csv")
    p.add_argument("--seed", type=int, default=3)
    p.add_argument("--out", default="model.npy")
    args = p.parse_args()
    rng = np.random.default_rng(args.seed)
    np.save(args.out, fit(np.loadtxt(args.data, delimiter=","), rng))


main()
'''


@pytest.mark.network
def test_init_lock_run_on_a_src_layout_package_started_with_python_m(tmp_path: Path) -> None:
    project = gen(tmp_path / "srcpkg", {
        "src": {"fitter": {"__init__.py": "", "__main__.py": SRC_MAIN,
                           "model.py": "def fit(xy, rng):\n    return xy.mean(axis=0) + "
                                       "rng.normal(size=xy.shape[1])\n"}},
        "tests": {"test_fit.py": "import pytest\n\n\ndef test_x():\n    assert pytest\n"},
        "data": {"xy.csv": "1,2\n3,4\n"}, "requirements.txt": "numpy>=2\n"})
    # no `if __name__` in a package's __main__: it is still the entry
    (project / "src/fitter/__main__.py").write_text(
        SRC_MAIN.replace("\nmain()\n", "\nif __name__ == '__main__':\n    main()\n"))
    _runs_without_edits(project)
    text = (project / "repro.toml").read_text()
    assert "runpy.run_module('fitter'" in text
    assert 'include = ["src/fitter/*"]' in text  # tests/ are not code
    assert (project / "model.npy").is_file()
