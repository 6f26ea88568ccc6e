"""Hermetic runs: every run in its own sandbox, so concurrent runs and undeclared inputs can
never poison the cache. Each test is a real scenario against the real command."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from builder import hashing
from builder.sandbox import bwrap_works
from tests.func.helpers import Result, repro

pytestmark = pytest.mark.network
needs_bwrap = pytest.mark.skipif(not bwrap_works(),
                                 reason="bubblewrap (Debian bwrap, installed by .ci/run) "
                                        "cannot make namespaces here")


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def git(project: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(project), "-c", "user.email=t@example.com",
                    "-c", "user.name=t", *args], check=True, capture_output=True)


def tree(root: Path) -> str:
    """Every byte of a folder, as one digest (symlinks by their target, never followed)."""
    return hashing.tree_digest(root, hashing.walk_files(root))


def spawn(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "builder", *args], cwd=cwd, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, **(env or {})})


def test_a_concurrent_seed_sweep_records_each_run_right(
    project: Path, tmp_path: Path, isolated: Path,
) -> None:
    one_at_a_time = {}
    alone = {"REPRO_HOME": str(tmp_path / "other-store")}
    for seed in (1, 2, 3, 4, 5, 6):
        r = repro("run", "--seed", str(seed), "--json", cwd=project, env=alone)
        assert r.code == 0, r.err
        one_at_a_time[seed] = r.json["outputs"][0]["digest"]
    assert len(set(one_at_a_time.values())) == 6  # each seed trains another model

    sweep = [spawn("run", "--seed", str(s), "--json", cwd=project) for s in (1, 2, 3, 4, 5)]
    same = [spawn("run", "--seed", "6", "--json", cwd=project) for _ in range(8)]
    results = {}
    for child in [*sweep, *same]:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err
        results.setdefault(json.loads(out)["seed"], []).append(json.loads(out))
    for seed, runs in results.items():
        assert {r["outputs"][0]["digest"] for r in runs} == {one_at_a_time[seed]}, seed
    assert sorted(r["cached"] for r in results[6]) == [False] + [True] * 7  # trained once
    keys = {r["run_key"] for r in results[6]}
    assert len(keys) == 1
    listed = repro("runs", "--json", cwd=project).json["runs"]
    assert len([r for r in listed if r["run_key"] in keys]) == 1
    assert all(r["status"] == "succeeded" for r in listed)
    for seed in (1, 2, 3, 4, 5, 6):  # afterwards, each hit restores that seed's model
        r = repro("run", "--seed", str(seed), "--json", cwd=project)
        assert r.json["cached"] is True
        assert hashing.file_digest(project / "model.npz") == one_at_a_time[seed]


HELPER_TRAIN = '''
import json, helper
open("model.bin", "w").write(helper.WEIGHTS)
json.dump({"accuracy": 1.0}, open("metrics.json", "w"))
'''


@pytest.mark.parametrize("level", ["bwrap", "folder"])
def test_an_undeclared_module_is_absent_and_named(project: Path, level: str) -> None:
    if level == "bwrap" and not bwrap_works():
        pytest.skip("bubblewrap cannot make namespaces here")
    env = {"REPRO_SANDBOX": level}
    (project / "train.py").write_text(HELPER_TRAIN)
    (project / "helper.py").write_text('WEIGHTS = "v1"\n')
    edit(project / "repro.toml", 'outputs = ["model.npz"]', 'outputs = ["model.bin"]')
    git(project, "init", "-q")
    git(project, "add", "repro.toml", "train.py", "data", "lockfiles")  # not helper.py
    git(project, "commit", "-qm", "x")
    r = repro("run", cwd=project, env=env)
    assert r.code == 3
    assert "No module named 'helper'" in r.err
    assert ("hint: helper.py is in the project but not in the run's sandbox, which holds "
            "only what the recipe declares: add it to [code] include (and `git add`") in r.err

    edit(project / "repro.toml", 'include = ["train.py"]', 'include = ["train.py", "helper.py"]')
    r = repro("run", cwd=project, env=env)  # declared, but not tracked: still not code
    assert r.code == 3
    assert "helper.py is in the project but not in the run's sandbox" in r.err
    git(project, "add", "helper.py", "repro.toml")
    first = repro("run", "--json", cwd=project, env=env)
    assert first.code == 0, first.err
    assert (project / "model.bin").read_text() == "v1"
    (project / "helper.py").write_text('WEIGHTS = "v2"\n')
    second = repro("run", "--json", cwd=project, env=env)
    assert second.code == 0, second.err
    assert second.json["cached"] is False
    assert second.json["run_key"] != first.json["run_key"]
    assert (project / "model.bin").read_text() == "v2"


@pytest.mark.parametrize("outputs", [
    '["data/train.csv"]', '["train.py"]', '["lockfiles/digits-logreg/pylock.toml"]',
    '["repro.toml"]', '["linked/model.npz"]', '["model.npz", "data"]'])
def test_outputs_overlapping_what_a_run_reads_are_refused_with_nothing_touched(
    project: Path, tmp_path: Path, outputs: str,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.npz").write_text("the user's file")
    (project / "linked").symlink_to(outside)
    edit(project / "repro.toml", 'outputs = ["model.npz"]', f"outputs = {outputs}")
    git(project, "init", "-q")  # what is code: the tracked files
    git(project, "add", ".")
    git(project, "commit", "-qm", "x")
    before, before_outside = tree(project), tree(outside)
    r = repro("run", cwd=project)
    assert r.code == 2, r.err
    assert "Traceback" not in r.err
    assert ("goes through the symlink linked" in r.err if "linked" in outputs
            else "a run must not replace what it reads" in r.err)
    assert tree(project) == before
    assert tree(outside) == before_outside


def test_outside_git_an_output_named_like_code_is_never_code(project: Path) -> None:
    edit(project / "repro.toml", 'outputs = ["model.npz"]', 'outputs = ["train.py"]')
    before = tree(project)
    r = repro("run", cwd=project)
    assert r.code == 3
    assert "hint: train.py is declared in train.outputs, so it is never code" in r.err
    assert tree(project) == before


def test_outputs_land_in_folders_the_project_lacks_and_nothing_else_does(
    project: Path,
) -> None:
    edit(project / "repro.toml", 'outputs = ["model.npz"]', 'outputs = ["out/deep/model.npz"]')
    edit(project / "repro.toml", '"--seed", "{seed}"]', '"--seed", "{seed}", "--out", '
                                                        '"out/deep/model.npz"]')
    edit(project / "train.py", '    save_npz(args.out, {',
         '    open("scratch.log", "w").write("not declared")\n    save_npz(args.out, {')
    r = repro("run", "--json", "--keep-sandbox", cwd=project)
    assert r.code == 0, r.err
    assert (project / "out" / "deep" / "model.npz").is_file()
    assert not (project / "scratch.log").exists()  # stays in the sandbox
    kept = Path(r.json["sandbox"])
    assert list(kept.rglob("scratch.log"))
    shutil.rmtree(kept)


def test_a_drifted_verify_leaves_the_working_model_alone(project: Path) -> None:
    assert repro("run", "-q", cwd=project).code == 0
    assert repro("baseline", "set", "-q", cwd=project).code == 0
    model = (project / "model.npz").read_bytes()
    edit(project / "train.py", "w -= args.lr *", "w -= 1.01 * args.lr *")
    r = repro("verify", "--json", cwd=project)
    assert r.code == 1
    assert r.json["verdict"] == "drifted"
    assert (project / "model.npz").read_bytes() == model


TREE_TRAIN = '''
import multiprocessing, os, sys, time
MARK = sys.argv[1]

def worker(i):
    time.sleep(6)
    open(f"late-{i}.txt", "w").write("a worker outlived repro")

if __name__ == "__main__":
    workers = [multiprocessing.Process(target=worker, args=(i,)) for i in range(2)]
    for w in workers:
        w.start()
    print("workers up", MARK, flush=True)
    time.sleep(6)
    open("late-main.txt", "w").write("the trainer outlived repro")
'''


def alive(mark: str) -> list[str]:
    found = subprocess.run(["pgrep", "-af", mark], capture_output=True, text=True,
                           check=False).stdout
    return [line for line in found.splitlines() if "pgrep" not in line]


@pytest.mark.parametrize("level", ["bwrap", "folder"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGINT])
def test_stopping_repro_ends_the_whole_training_tree(
    project: Path, tmp_path: Path, isolated: Path, level: str, sig: signal.Signals,
) -> None:
    if level == "bwrap" and not bwrap_works():
        pytest.skip("bubblewrap cannot make namespaces here")
    mark = f"repro-tree-{tmp_path.name}-{sig.name}"
    (project / "train.py").write_text(TREE_TRAIN)
    edit(project / "repro.toml", 'command = ["python", "train.py", "--data", "{data.train}", '
                                 '"--lr", "{params.lr}",\n           "--epochs", "{params.epochs}", '
                                 '"--seed", "{seed}"]', f'command = ["python", "train.py", "{mark}"]')
    assert repro("build", "-q", cwd=project).code == 0
    before = tree(project)
    child = spawn("run", cwd=project, env={"REPRO_SANDBOX": level, "REPRO_KILL_GRACE": "2"})
    assert child.stderr is not None
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(child.stderr), daemon=True)  # type: ignore[arg-type]
    reader.start()
    deadline = time.monotonic() + 60
    while not any("workers up" in line for line in lines):
        assert time.monotonic() < deadline, "".join(lines)
        assert child.poll() is None, "".join(lines)
        time.sleep(0.05)
    assert len(alive(mark)) >= 3  # the trainer and its two workers
    child.send_signal(sig)
    child.wait(timeout=30)
    reader.join(timeout=10)
    for stream in (child.stdout, child.stderr):
        assert stream is not None
        stream.close()
    deadline = time.monotonic() + 10  # SIGKILL: the supervisor's grace, then its own kill
    while alive(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(mark) == []
    time.sleep(7)  # past the moment the trainer and the workers would have written
    assert tree(project) == before
    if sig != signal.SIGKILL:
        assert child.returncode == (130 if sig == signal.SIGINT else 143)
        assert "Traceback" not in "".join(lines)
    sandboxes = isolated / "sandbox"  # a killed repro leaves its sandbox; gc takes it
    assert repro("cache", "gc", "-q", cwd=project).code == 0
    assert not sandboxes.is_dir() or list(sandboxes.iterdir()) == []


ENV_TRAIN = '''
import json, os
seen = {"caller": os.environ.get("CALLER_VAR", ""), "token": os.environ.get("MY_TOKEN", ""),
        "home": os.environ["HOME"], "tz": os.environ["TZ"], "lang": os.environ["LANG"]}
open("model.bin", "w").write("weights")
json.dump({"caller_seen": int(bool(seen["caller"])), "token_length": len(seen["token"])},
          open("metrics.json", "w"))
print("token is", seen["token"])
if os.environ.get("REPRO_PARAM_FAIL") == "true":
    raise SystemExit(f"failing with {seen['token']}")
'''


def test_the_command_sees_only_its_declared_environment_and_no_token_is_written(
    project: Path, isolated: Path, tmp_path: Path,
) -> None:
    token = "tok-" + "7f3a9c" * 6
    (project / "train.py").write_text(ENV_TRAIN)
    recipe = project / "repro.toml"
    edit(recipe, 'outputs = ["model.npz"]', 'outputs = ["model.bin"]\npass-env = ["MY_TOKEN"]')
    edit(recipe, "params = { lr = 0.5, epochs = 200 }", "params = { lr = 0.5, epochs = 200, "
                                                        "fail = false }")
    caller = {"CALLER_VAR": "from-the-caller", "MY_TOKEN": token}
    r = repro("run", "--json", cwd=project, env=caller)
    assert r.code == 0, r.err
    assert r.json["metrics"] == {"caller_seen": 0, "token_length": len(token)}
    failed = repro("run", "-p", "fail=true", "--json", cwd=project, env=caller)
    assert failed.code == 3
    shown = repro("show", r.json["run_key"], "--json", cwd=project)
    assert shown.json["pass_env"] == ["MY_TOKEN"]
    assert shown.json["variables"]["TZ"] == "UTC"
    assert "MY_TOKEN" not in shown.json["variables"]
    provenance = repro("export", "provenance", r.json["record"], cwd=project)
    runs = repro("runs", "--json", cwd=project)
    written = [r.out, failed.out, shown.out, provenance.out, runs.out]
    assert [token in text for text in written] == [False] * len(written)
    stored = [p for p in isolated.rglob("*") if p.is_file() and token.encode() in p.read_bytes()]
    assert stored == []
    assert "[MY_TOKEN]" in failed.out  # the output kept in the failure, with the value blotted
    same_key = repro("run", "--json", cwd=project, env={**caller, "MY_TOKEN": "another-one"})
    assert same_key.json["run_key"] == r.json["run_key"]  # values are not in the key


def test_a_credential_in_train_env_is_refused_unless_declared_not_secret(
    project: Path,
) -> None:
    recipe = project / "repro.toml"
    edit(recipe, 'metrics = "metrics.json"', 'metrics = "metrics.json"\n'
                                             'env = { HF_TOKEN = "hf_abc", SORT_KEY = "x" }')
    r = repro("run", cwd=project)
    assert r.code == 2
    assert "`train.env.HF_TOKEN` looks like a credential" in r.err
    assert 'pass-env = ["HF_TOKEN"]' in r.err
    edit(recipe, 'HF_TOKEN = "hf_abc", ', "")
    r = repro("run", cwd=project)
    assert r.code == 2
    assert "`train.env.SORT_KEY` looks like a credential" in r.err
    edit(recipe, 'env = { SORT_KEY = "x" }', 'env = { SORT_KEY = "x" }\nnot-secret = ["SORT_KEY"]')
    r = repro("run", "--json", cwd=project)
    assert r.code == 0, r.err


NET_TRAIN = '''
import json, socket, sys
try:
    socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=5).close()
    reached = 1
except OSError as exc:
    print("no network:", exc)
    reached = 0
open("model.bin", "w").write(str(reached))
json.dump({"reached": reached}, open("metrics.json", "w"))
'''


@needs_bwrap
def test_the_network_is_hidden_unless_the_recipe_asks_for_it(project: Path) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def serve() -> None:
        with contextlib.suppress(OSError):  # until the test closes the server
            while True:
                server.accept()[0].close()

    threading.Thread(target=serve, daemon=True).start()
    (project / "train.py").write_text(NET_TRAIN)
    recipe = project / "repro.toml"
    edit(recipe, 'outputs = ["model.npz"]', 'outputs = ["model.bin"]')
    edit(recipe, '"--data", "{data.train}", "--lr", "{params.lr}",\n           "--epochs", '
                 '"{params.epochs}", "--seed", "{seed}"]', f'"{port}"]')
    hidden = repro("run", "--json", cwd=project)
    assert hidden.code == 0, hidden.err
    assert hidden.json["metrics"] == {"reached": 0}
    assert repro("show", "--json", cwd=project).json["network"] is False
    edit(recipe, 'metrics = "metrics.json"', 'metrics = "metrics.json"\nnetwork = true')
    allowed = repro("run", "--json", cwd=project)
    assert allowed.json["metrics"] == {"reached": 1}
    assert allowed.json["run_key"] != hidden.json["run_key"]
    edit(recipe, "network = true", "sandbox = false")
    unsandboxed = repro("run", "--json", cwd=project)
    assert unsandboxed.json["metrics"] == {"reached": 1}
    shown = repro("show", "--json", cwd=project).json
    assert (shown["sandbox"], shown["network"]) == ("off", True)
    server.close()


def test_outside_git_the_code_digest_never_counts_what_runs_write(
    project: Path, isolated: Path,
) -> None:
    recipe = project / "repro.toml"
    edit(recipe, 'include = ["train.py"]', 'include = ["**"]')
    env = {"REPRO_HOME": str(project / ".repro")}  # the store inside the project, too
    first = repro("run", "--json", cwd=project, env=env)
    assert first.code == 0, first.err
    assert "is not a git repository: the code digest covers the 3 files matching [code] " \
           "include: data/train.csv, repro.toml, train.py" in first.err
    second = repro("run", "--json", cwd=project, env=env)
    assert second.json["cached"] is True
    assert "not a git repository" not in second.err  # said once
    (project / "notes.txt").write_text("a new file is code here")
    third = repro("run", "--json", cwd=project, env=env)
    assert third.json["run_key"] != first.json["run_key"]
    assert "covers the 4 files" in third.err


def assert_no_traceback(r: Result) -> None:
    assert "Traceback" not in r.err


ESCAPE = '''
exec > escape.txt 2>&1
P=$(pwd)
umount -l "$P"; umount -l /tmp
mount -o remount,rw,bind /
echo x > "$P/ESCAPED" || true
echo x > /proc/sys/kernel/hostname || true
grep CapEff /proc/self/status
'''


@needs_bwrap
def test_root_inside_the_sandbox_has_no_capabilities_to_leave_it(project: Path) -> None:
    (project / "escape.sh").write_text(ESCAPE)
    recipe = project / "repro.toml"
    edit(recipe, 'command = ["python", "train.py", "--data", "{data.train}", "--lr", '
                 '"{params.lr}",\n           "--epochs", "{params.epochs}", "--seed", "{seed}"]',
         'command = ["sh", "escape.sh"]')
    edit(recipe, 'include = ["train.py"]', 'include = ["escape.sh"]')
    edit(recipe, 'outputs = ["model.npz"]', 'outputs = ["escape.txt"]')
    edit(recipe, 'metrics = "metrics.json"\n', "")
    hostname = Path("/proc/sys/kernel/hostname").read_text()
    r = repro("run", cwd=project)
    assert r.code == 0, r.err
    said = (project / "escape.txt").read_text()
    assert "CapEff:\t0000000000000000" in said
    assert not (project / "ESCAPED").exists()
    assert Path("/proc/sys/kernel/hostname").read_text() == hostname


@pytest.mark.parametrize("output", [".git/config", ".venv/lib/python3.11/site-packages/x.pth",
                                    "lockfiles/other.txt"])
def test_outputs_where_tools_run_code_are_refused(project: Path, output: str) -> None:
    edit(project / "repro.toml", 'outputs = ["model.npz"]', f'outputs = ["{output}"]')
    r = repro("run", cwd=project)
    assert r.code == 2
    assert "which repro and other tools run or read" in r.err or "lockfiles" in r.err


def test_the_supervisor_ends_the_tree_even_if_repro_dies_as_it_starts(tmp_path: Path) -> None:
    mark = f"sleep {4000 + os.getpid() % 1000}.5"
    parent = os.fork()
    if parent == 0:  # a repro that dies the moment its supervisor exists
        subprocess.Popen([sys.executable, "-I", "-S",
                          str(Path(__file__).parents[2] / "builder" / "supervise.py"), "1",
                          str(os.getpid()), "--", *mark.split()], start_new_session=True)
        os._exit(0)
    os.waitpid(parent, 0)
    deadline = time.monotonic() + 10
    while alive(mark) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(mark) == []


LEAKY = '''
import base64, json, os
token = os.environ["MY_TOKEN"]
print("plain", token)
print("b64", base64.b64encode(token.encode()).decode())
print("hex", token.encode().hex())
print("split", token[:6] + "\\x1b[0m" + token[6:])
open("model.bin", "w").write("m")
json.dump({"tok": token if os.environ["REPRO_PARAM_LEAK"] == "true" else 1},
          open("metrics.json", "w"))
raise SystemExit(int(os.environ["REPRO_PARAM_FAIL"] == "true"))
'''


def test_a_token_in_common_encodings_or_in_metrics_is_never_written(
    project: Path, isolated: Path,
) -> None:
    token = "ghp_" + "Zq81" * 9
    (project / "train.py").write_text(LEAKY)
    recipe = project / "repro.toml"
    edit(recipe, 'outputs = ["model.npz"]', 'outputs = ["model.bin"]\npass-env = ["MY_TOKEN"]')
    edit(recipe, "params = { lr = 0.5, epochs = 200 }",
         "params = { lr = 0.5, epochs = 200, fail = true, leak = false }")
    caller = {"MY_TOKEN": token}
    failed = repro("run", "--json", cwd=project, env=caller)
    assert failed.code == 3
    leaked = repro("run", "-p", "fail=false", "-p", "leak=true", "--json", cwd=project,
                   env=caller)
    assert leaked.code == 3
    assert "holds the value of pass-env MY_TOKEN" in leaked.err
    import base64

    forms = [token, base64.b64encode(token.encode()).decode().rstrip("="), token.encode().hex()]
    for out in (failed.out, leaked.out):
        assert not any(form in out for form in forms)
    stored = [p for p in isolated.rglob("*") if p.is_file() and not p.is_symlink()
              and any(form.encode() in p.read_bytes() for form in forms)]
    assert stored == []


def test_absolute_data_is_bound_into_the_sandbox(project: Path, tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shutil.copy(project / "data" / "train.csv", shared / "train.csv")
    edit(project / "repro.toml", 'train = { path = "data/train.csv"',
         f'train = {{ path = "{shared / "train.csv"}"')
    r = repro("run", "--json", cwd=project)
    assert r.code == 0, r.err
    assert r.json["metrics"]["accuracy"] > 0.8


def test_a_data_folder_that_links_outside_itself_or_holds_a_pipe_is_refused(
    project: Path, tmp_path: Path,
) -> None:
    folder = project / "data"
    (tmp_path / "elsewhere.csv").write_text("1,2\n")
    (folder / "linked.csv").symlink_to(tmp_path / "elsewhere.csv")
    edit(project / "repro.toml", 'path = "data/train.csv"', 'path = "data"')
    r = repro("run", cwd=project)
    assert r.code == 2
    assert "links to" in r.err and "outside the input" in r.err
    (folder / "linked.csv").unlink()
    os.mkfifo(folder / "pipe")
    r = repro("run", cwd=project)
    assert r.code == 2
    assert "neither a file nor a folder" in r.err


def test_a_sandbox_level_typo_is_said_even_on_a_cache_hit(project: Path) -> None:
    assert repro("run", "-q", cwd=project).code == 0
    r = repro("run", cwd=project, env={"REPRO_SANDBOX": "bwrapp"})
    assert r.code == 2
    assert "REPRO_SANDBOX='bwrapp' is not a sandbox level" in r.err


def test_a_kept_sandbox_outlives_gc_until_its_cutoff(project: Path, isolated: Path) -> None:
    r = repro("run", "--keep-sandbox", "--json", cwd=project)
    kept = Path(r.json["sandbox"])
    assert repro("cache", "gc", cwd=project).code == 0
    assert kept.is_dir()
    os.utime(kept.with_name(kept.name + ".kept"), (0, 0))
    assert repro("cache", "gc", cwd=project).code == 0
    assert not kept.exists()
