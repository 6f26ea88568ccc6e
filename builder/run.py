"""`repro run`: the run key, an answer from the store, or a seeded, recorded training run."""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol

from builder import __version__, env, hardware, hashing, inputs, proc
from builder.errors import EXIT_TOOL, BuildError, InputError, ReproError, did_you_mean
from builder.recipe import Recipe, Train
from builder.resolve import NO_MACHINE_SOURCES, MachineSources
from builder.store import Store, atomic_write, replacing

RECORD_SCHEMA = "repro.run/v1"
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")  # names checked when the recipe was read
KEY_FORMAT = "repro.runkey/v1"


class RunFailed(ReproError):
    """The training command failed or did not produce what the recipe declares."""

    exit_code = EXIT_TOOL

    def __init__(self, message: str, record: str, *, hint: str = "") -> None:
        self.record = record
        super().__init__(f"{message}\n  the failure is recorded as {record}", hint=hint)


@dataclass(frozen=True)
class Plan:
    """Everything a run key is made of, computed without running anything."""

    recipe: Recipe
    train: Train
    env_id: str
    code: inputs.CodeState
    data: dict[str, str]
    params: dict[str, Any]
    seed: int
    hardware: dict[str, Any]
    hardware_class: dict[str, Any] | None
    key: str
    relocked: bool = False


@dataclass(frozen=True)
class RunResult:
    record_digest: str
    record: dict[str, Any]
    cached: bool
    objects: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {"run_key": r["run_key"], "record": self.record_digest, "cached": self.cached,
                "recipe": r["recipe"]["name"], "env": r["env"], "seed": r["seed"],
                "params": r["params"], "metrics": r["metrics"], "duration": r["duration"],
                "outputs": [{**o, "object": self.objects.get(o["path"])} for o in r["outputs"]]}


def train_of(recipe: Recipe) -> Train:
    if recipe.train is None:
        raise InputError(f"{recipe.path} has no [train] section: there is nothing to run",
                         hint='add [train] with command = ["python", "train.py"]')
    return recipe.train


def resolve_params(recipe: Recipe, overrides: Sequence[str]) -> dict[str, Any]:
    """The recipe's params with `key=value` overrides, each parsed as the recipe's type.

    Raises:
        InputError: an override is malformed, names an undeclared param, or has the wrong type.
    """
    declared = dict(train_of(recipe).params)
    for item in overrides:
        name, sep, text = item.partition("=")
        if not sep or not name:
            raise InputError(f"--param {item!r} is not key=value", hint="e.g. --param lr=0.05")
        if name not in declared:
            raise InputError(
                f"--param {name}: {recipe.path} declares no param `{name}`"
                f"{did_you_mean(name, declared)}",
                hint=f"declared params: {', '.join(sorted(declared)) or 'none'} "
                     "(add it to [train] params first)",
            )
        declared[name] = _parse_like(declared[name], text, name)
    return declared


def _parse_like(current: Any, text: str, name: str) -> Any:
    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if isinstance(current, int):
            return int(text)
        if isinstance(current, float):
            return float(text)
    except ValueError:
        raise InputError(f"--param {name}={text}: expected {type(current).__name__}, like "
                         f"the recipe's {current!r}") from None
    return text


def _render(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def render_command(recipe: Recipe, train: Train, seed: int, params: dict[str, Any]) -> list[str]:
    """The command with {seed}, {params.NAME} and {data.NAME} filled in."""
    values = {"seed": str(seed), **{f"params.{k}": _render(v) for k, v in params.items()},
              **{f"data.{d.name}": d.path for d in recipe.data}}
    return [_PLACEHOLDER.sub(lambda m: values[m.group(1)], arg) for arg in train.command]


def plan(
    recipe: Recipe, *, store: Store, mode: str = "auto",
    machine: MachineSources = NO_MACHINE_SOURCES, offline: bool = False,
    seed: int | None = None, params: Sequence[str] = (),
    say: Callable[[str], None] = env.noop, runner: str | None = None,
) -> Plan:
    """Compute the run key: env id, code, data, command, params, seed (+ hardware if bitwise)."""
    train = train_of(recipe)
    current, relocked = env.current_lock(recipe, mode, machine, offline, say)
    with inputs.stat_cache(store.root / "cache" / "stat.sqlite") as cache:
        code = inputs.code_state(recipe, cache)
        data = inputs.data_digests(recipe, cache)
    chosen = train.seeds[0] if seed is None else seed
    if chosen < 0:
        raise InputError(f"--seed {chosen}: seeds are non-negative integers")
    values = resolve_params(recipe, params)
    info = hardware.facts()
    klass = hardware.hardware_class(info) if recipe.reproducibility.standard == "bitwise" else None
    key = hashing.digest_json({
        "format": KEY_FORMAT,
        "env": current.env_id,
        "code": code.digest,
        "data": data,
        "command": list(train.command),
        "params": values,
        "seed": chosen,
        "outputs": list(train.outputs),
        "metrics": train.metrics,
        "run_env": dict(train.env),
        "threads": train.threads,
        "hardware": klass,
        # where it runs, when not in the env's virtualenv: an image digest
        **({"runner": runner} if runner else {}),
    })
    return Plan(recipe, train, current.env_id, code, data, values, chosen, info, klass, key,
                relocked)


def run(
    recipe: Recipe, *, store: Store, mode: str = "auto",
    machine: MachineSources = NO_MACHINE_SOURCES, offline: bool = False,
    seed: int | None = None, params: Sequence[str] = (), use_cache: bool = True,
    in_image: bool = False, say: Callable[[str], None] = env.noop,
) -> RunResult:
    """Answer from the store when a run with the same key succeeded; else train and record.

    With `in_image`, the command runs inside the recipe's OCI image (built first) through
    buildah, and the image digest joins the run key.

    Raises:
        RunFailed: the command failed, or an output or the metrics file is missing or bad.
    """
    runner: Runner | None = None
    image_digest = None
    if in_image:
        from builder.image.runner import ImageRunner  # noqa: PLC0415

        image_runner = ImageRunner.build(recipe, store=store, mode=mode, machine=machine,
                                         offline=offline, say=say)
        runner, image_digest = image_runner, image_runner.identity
    p = plan(recipe, store=store, mode=mode, machine=machine, offline=offline, seed=seed,
             params=params, say=say, runner=image_digest)
    if use_cache:
        found = store.run_for_key(p.key)
        if found is not None:
            record = store.record(found)
            objects = restore_outputs(recipe, store, record)
            return RunResult(found, record, cached=True, objects=objects)
    if runner is None:
        runner = VenvRunner(env.build(recipe, store=store, mode="frozen" if p.relocked else mode,
                                      machine=machine, offline=offline, say=say))
    return _execute(p, runner, store, say)


RUNTIME_FILES = ("runtime.py", "tensordiff.py")


def runtime_dir(store: Store) -> tuple[Path, str]:
    """A folder holding only builder/runtime.py and builder/tensordiff.py (stdlib-only modules
    for code inside an environment), for a PYTHONPATH through which nothing else leaks."""
    sources = {name: Path(__file__).with_name(name).read_bytes() for name in RUNTIME_FILES}
    digest = hashing.digest_json({k: hashing.digest_bytes(v) for k, v in sources.items()})
    root = store.root / "runtime" / digest.removeprefix(hashing.PREFIX)
    if not (root / "builder" / "__init__.py").is_file():
        for name, data in sources.items():
            atomic_write(root / "builder" / name, data)
        atomic_write(root / "builder" / "__init__.py", b"")  # last: marks the folder complete
    return root, digest


def seeded_env(p: Plan) -> dict[str, str]:
    """The variables repro sets for every run; these (and only these) go into the record."""
    train = p.train
    seeded = {
        "REPRO_SEED": str(p.seed),
        "PYTHONHASHSEED": str(p.seed % 2**32),
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "REPRO_RUN_KEY": p.key,
        **{f"REPRO_PARAM_{k.upper()}": _render(v) for k, v in p.params.items()},
        **{f"REPRO_DATA_{d.name.upper()}": d.path for d in p.recipe.data},
    }
    if train.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "REPRO_THREADS"):
            seeded[var] = str(train.threads)
    seeded.update(train.env)
    return seeded


class Runner(Protocol):
    """Where a run's command executes: the env's virtualenv, or an image."""

    def execute(self, p: Plan, argv: list[str], variables: dict[str, str],
                runtime: Path, params_file: Path) -> tuple[int, str]: ...

    def software(self, runtime_digest: str) -> dict[str, Any]: ...


class VenvRunner:
    def __init__(self, built: env.BuildResult) -> None:
        self.built = built

    def execute(self, p: Plan, argv: list[str], variables: dict[str, str],
                runtime: Path, params_file: Path) -> tuple[int, str]:
        host = {**env.activate(self.built.path), "PYTHONPATH": str(runtime),
                "REPRO_PARAMS_FILE": str(params_file)}
        if p.train.metrics:
            host["REPRO_METRICS_FILE"] = str(p.recipe.root / p.train.metrics)
        return proc.tee(argv, env=proc.clean_env(variables | host), cwd=p.recipe.root)

    def software(self, runtime_digest: str) -> dict[str, Any]:
        manifest = env.read_manifest(self.built.path)
        return software(self.built.python, manifest["packages"], manifest["pylock"],
                        runtime_digest)


def software(python: str, packages: dict[str, str], pylock_digest: str, runtime_digest: str,
             **more: str) -> dict[str, Any]:
    """A record's `software`: interpreter, packages, the pylock and runtime it ran with."""
    return {"python": python, "packages": packages,
            # CUDA runtime, cuDNN, NCCL… as the wheels that bring them (nvidia-cudnn-cu12 …)
            "accelerator_libraries": {k: v for k, v in packages.items()
                                      if k.startswith("nvidia-")},
            "pylock": pylock_digest, "repro": __version__, "runtime": runtime_digest, **more}


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _execute(p: Plan, runner: Runner, store: Store,
             say: Callable[[str], None]) -> RunResult:
    recipe, train = p.recipe, p.train
    for out in [*train.outputs, *([train.metrics] if train.metrics else [])]:
        (recipe.root / out).unlink(missing_ok=True)  # a stale file must not pass as this run's
    runtime, runtime_digest = runtime_dir(store)
    argv = render_command(recipe, train, p.seed, p.params)
    say(f"Running {recipe.name} (seed {p.seed}, run key {p.key[7:19]}): {' '.join(argv)}")
    (store.root / "tmp").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        params_file = Path(tmp) / "params.json"
        params_file.write_text(json.dumps(p.params, sort_keys=True))
        variables = seeded_env(p)
        started, clock = _now(), time.perf_counter()
        code, tail = runner.execute(p, argv, variables, runtime, params_file)
        duration = round(time.perf_counter() - clock, 3)
    record: dict[str, Any] = {
        "schema": RECORD_SCHEMA,
        "run_key": p.key,
        "recipe": {"name": recipe.name, "digest": recipe.digest(),
                   "standard": recipe.reproducibility.standard},
        "env": p.env_id,
        "code": p.code.to_json(),
        "data": {d.name: {"path": d.path, "digest": p.data[d.name]} for d in recipe.data},
        "command": argv,
        "params": p.params,
        "seed": p.seed,
        "variables": variables,
        "hardware": p.hardware,
        "hardware_class": p.hardware_class,
        "software": runner.software(runtime_digest),
        "started": started,
        "ended": _now(),
        "duration": duration,
        "exit_status": code,
        "outputs": [],
        "metrics": {},
    }
    if code != 0:
        _fail(store, record, f"the training command exited with status {code}:\n{tail.rstrip()}",
              hint="fix the command or the code; nothing was stored as a success")
    for out in train.outputs:
        path = recipe.root / out
        if not path.is_file():
            _fail(store, record, f"the command did not produce the declared output {out}",
                  hint=f"write {out} (relative to {recipe.root}), or fix train.outputs")
        record["outputs"].append({"path": out, "digest": hashing.file_digest(path),
                                  "size": path.stat().st_size})
    if train.metrics:
        record["metrics"] = _read_metrics(store, record, recipe.root / train.metrics)
    objects = {o["path"]: str(store.put_file(recipe.root / o["path"], o["digest"]))
               for o in record["outputs"]}
    digest = store.add_record(record, succeeded=True)
    return RunResult(digest, record, cached=False, objects=objects)


def _read_metrics(store: Store, record: dict[str, Any], path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        _fail(store, record, f"the command did not write its metrics file {path.name}",
              hint="write it (builder.runtime.log_metrics does), or drop train.metrics")
    except (ValueError, UnicodeDecodeError) as exc:
        _fail(store, record, f"the metrics file {path} is not valid JSON: {exc}",
              hint="write a JSON object of metric names to numbers")
    if not isinstance(metrics, dict):
        _fail(store, record, f"the metrics file {path} holds {type(metrics).__name__}, "
                             "not a JSON object", hint='write {"accuracy": 0.9, …}')
    return metrics


def _fail(store: Store, record: dict[str, Any], message: str, *, hint: str) -> NoReturn:
    record = {**record, "exit_status": record["exit_status"] or 1, "error": message}
    raise RunFailed(message, store.add_record(record, succeeded=False), hint=hint)


def restore_outputs(recipe: Recipe, store: Store, record: dict[str, Any]) -> dict[str, str]:
    """Put a recorded run's outputs back in the project (copies), unless already there."""
    objects = {}
    for out in record["outputs"]:
        obj = store.object_path(out["digest"])
        objects[out["path"]] = str(obj)
        target = recipe.root / out["path"]
        if target.is_file() and target.stat().st_size == out["size"] \
                and hashing.file_digest(target) == out["digest"]:
            continue
        with replacing(target) as tmp:
            shutil.copyfile(obj, tmp)
    return objects


def evaluate(recipe: Recipe, store: Store, built: env.BuildResult,
             say: Callable[[str], None] = env.noop) -> dict[str, Any]:
    """Run `[reproducibility] evaluate` in the environment on the outputs now in the project.

    Returns the metrics it writes to REPRO_METRICS_FILE (builder.runtime.log_metrics does).

    Raises:
        BuildError: the command fails or writes no JSON object of metrics.
    """
    argv = list(recipe.reproducibility.evaluate)
    runtime, _ = runtime_dir(store)
    say(f"Evaluating {recipe.name}: {' '.join(argv)}")
    (store.root / "tmp").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=store.root / "tmp") as tmp:
        metrics_file = Path(tmp) / "evaluation.json"
        variables = {**env.activate(built.path), "PYTHONPATH": str(runtime),
                     "REPRO_METRICS_FILE": str(metrics_file)}
        code, tail = proc.tee(argv, env=proc.clean_env(variables), cwd=recipe.root)
        if code != 0:
            raise BuildError(f"the evaluation command exited with status {code}:\n{tail}",
                             hint="fix reproducibility.evaluate")
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError) as exc:
            raise BuildError(f"the evaluation command wrote no JSON metrics: {exc}",
                             hint="write them with builder.runtime.log_metrics") from exc
    if not isinstance(metrics, dict):
        raise BuildError("the evaluation metrics are not a JSON object")
    return metrics
