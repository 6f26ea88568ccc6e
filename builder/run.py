"""`repro run`: the run key, an answer from the store, or a seeded, recorded training run."""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

from builder import hashing
from builder.errors import (
    EXIT_INPUT,
    BuildError,
    InputError,
    RunFailed,
    StoreError,
    did_you_mean,
)
from builder.project import Project
from builder.recipe import Recipe, Train
from builder.records import CodeFacts, DataFacts, Output, RecipeRef, RunRecord
from builder.runner import Job, Runner, runtime_dir
from builder.store import replacing

log = logging.getLogger(__name__)
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")  # names checked when the recipe was read
KEY_FORMAT = "repro.runkey/v1"


@dataclass(frozen=True)
class Plan:
    """Everything a run key is made of, computed without running anything."""

    project: Project
    train: Train
    env_id: str
    params: dict[str, Any]
    seed: int
    hardware_class: dict[str, Any] | None
    runner: str
    key: str

    @property
    def recipe(self) -> Recipe:
        return self.project.recipe


@dataclass(frozen=True)
class RunResult:
    record_digest: str
    record: RunRecord
    cached: bool
    objects: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {"run_key": r.run_key, "record": self.record_digest, "cached": self.cached,
                "recipe": r.recipe.name, "env": r.env, "seed": r.seed,
                "params": r.params, "metrics": r.metrics, "duration": r.duration,
                "outputs": [{**o.to_json(), "object": self.objects.get(o.path)}
                            for o in r.outputs]}


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
        if "\0" in text:
            raise InputError(f"--param {name}: the value holds a NUL character")
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


def plan(project: Project, runner: Runner, *, seed: int | None = None,
         params: Sequence[str] = ()) -> Plan:
    """Compute the run key: env id, code, data, command, params, seed (+ hardware if bitwise),
    and the runner's identity (an image digest) when it has one."""
    from builder import hardware  # noqa: PLC0415

    recipe = project.recipe
    train = train_of(recipe)
    chosen = train.seeds[0] if seed is None else seed
    if chosen < 0:
        raise InputError(f"--seed {chosen}: seeds are non-negative integers")
    values = resolve_params(recipe, params)
    env_id = project.lock.env_id
    project.digest_inputs()
    klass = (hardware.hardware_class(project.hardware)
             if recipe.reproducibility.standard == "bitwise" else None)
    where = runner.identity()
    key = hashing.digest_json({
        "format": KEY_FORMAT,
        "env": env_id,
        "code": project.code.digest,
        "data": project.data,
        "command": list(train.command),
        "params": values,
        "seed": chosen,
        "outputs": list(train.outputs),
        "metrics": train.metrics,
        "run_env": dict(train.env),
        "threads": train.threads,
        "hardware": klass,
        # where it runs, when not in the env's virtualenv: an image digest
        **({"runner": where} if where else {}),
    })
    return Plan(project, train, env_id, values, chosen, klass, runner.kind, key)


def run(project: Project, runner: Runner, *, seed: int | None = None,
        params: Sequence[str] = (), use_cache: bool = True) -> RunResult:
    """Answer from the store when a run with the same key succeeded; else train and record.

    Raises:
        RunFailed: the command failed, or an output or the metrics file is missing or bad.
    """
    p = plan(project, runner, seed=seed, params=params)
    records = project.store.records
    found = records.for_key(p.key) if use_cache else None
    if found is not None:
        try:
            record = records.get(found)
        except StoreError as exc:
            log.warning("%s; training again", exc.message)
        else:
            return RunResult(found, record, cached=True,
                             objects=restore_outputs(project, record.outputs))
    runner.prepare()
    return _execute(p, runner)


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


def _shown(argv: list[str], limit: int = 400) -> str:
    """A command line for a progress message: whole, or its start and how long it is."""
    text = " ".join(argv)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(argv)} arguments)"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _execute(p: Plan, runner: Runner) -> RunResult:
    project, recipe, train = p.project, p.recipe, p.train
    store = project.store
    for out in [*train.outputs, *([train.metrics] if train.metrics else [])]:
        if (recipe.root / out).is_dir() and not (recipe.root / out).is_symlink():
            raise InputError(f"{recipe.path}: the declared output {out} is a directory in "
                             f"{recipe.root}; outputs are files",
                             hint="declare the files inside it, or write an archive of it")
        (recipe.root / out).unlink(missing_ok=True)  # a stale file must not pass as this run's
    runtime, runtime_digest = runtime_dir(store)
    argv = render_command(recipe, train, p.seed, p.params)
    log.info("Running %s (seed %d, run key %s): %s", recipe.name, p.seed, p.key[7:19],
             _shown(argv))
    with store.scratch() as tmp:
        params_file = tmp / "params.json"
        params_file.write_text(json.dumps(p.params, sort_keys=True))
        variables = seeded_env(p)
        job = Job(argv, variables, recipe.root, runtime, params_file,
                  recipe.root / train.metrics if train.metrics else None, train.outputs)
        started, clock = _now(), time.perf_counter()
        code, tail = runner.execute(job)
        duration = round(time.perf_counter() - clock, 3)
    code_state = project.code
    record = RunRecord(
        run_key=p.key,
        recipe=RecipeRef(recipe.name, recipe.digest(), recipe.reproducibility.standard),
        env=p.env_id,
        code=CodeFacts(code_state.digest, code_state.files, code_state.commit, code_state.dirty),
        data={d.name: DataFacts(d.path, project.data[d.name]) for d in recipe.data},
        command=tuple(argv),
        params=p.params,
        seed=p.seed,
        variables=variables,
        hardware=project.hardware,
        hardware_class=p.hardware_class,
        software=runner.software(runtime_digest),
        started=started,
        ended=_now(),
        duration=duration,
        exit_status=code,
        runner=p.runner,
        key_format=KEY_FORMAT,
    )
    if code != 0:
        _fail(project, record, f"the training command exited with status {code}:\n"
                               f"{tail.rstrip()}",
              hint="fix the command or the code; nothing was stored as a success")
    outputs = []
    for out in train.outputs:
        path = recipe.root / out
        if path.is_dir() and not path.is_symlink():
            _fail(project, record, f"the declared output {out} is a directory; outputs are files",
                  hint=f"write a file at {out} (an archive of the folder), or list the files "
                       "in it in train.outputs", exit_code=EXIT_INPUT)
        if not path.is_file():
            _fail(project, record, f"the command did not produce the declared output {out}",
                  hint=f"write {out} (relative to {recipe.root}), or fix train.outputs")
        outputs.append(Output(out, hashing.file_digest(path), path.stat().st_size))
    metrics = _read_metrics(project, record, recipe.root / train.metrics) \
        if train.metrics else {}
    record = _with(record, outputs=tuple(outputs), metrics=metrics)
    objects = {o.path: str(store.blobs.put_file(recipe.root / o.path, o.digest))
               for o in record.outputs}
    digest = store.records.add(record)
    return RunResult(digest, record, cached=False, objects=objects)


def _with(record: RunRecord, **changes: Any) -> RunRecord:
    from dataclasses import replace  # noqa: PLC0415

    return replace(record, **changes)


def _read_metrics(project: Project, record: RunRecord, path: Path) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text())
    except FileNotFoundError:
        _fail(project, record, f"the command did not write its metrics file {path.name}",
              hint="write it (builder.runtime.log_metrics does), or drop train.metrics")
    except (ValueError, UnicodeDecodeError) as exc:
        _fail(project, record, f"the metrics file {path} is not valid JSON: {exc}",
              hint="write a JSON object of metric names to numbers")
    if not isinstance(metrics, dict):
        _fail(project, record, f"the metrics file {path} holds {type(metrics).__name__}, "
                               "not a JSON object", hint='write {"accuracy": 0.9, …}')
    return metrics


def _fail(project: Project, record: RunRecord, message: str, *, hint: str,
          exit_code: int | None = None) -> NoReturn:
    failed = _with(record, exit_status=record.exit_status or 1, error=message)
    raise RunFailed(message, project.store.records.add(failed), hint=hint,
                    **({"exit_code": exit_code} if exit_code else {}))


def restore_outputs(project: Project, outputs: Sequence[Output]) -> dict[str, str]:
    """Put a recorded run's outputs back in the project (copies), unless already there.

    Raises:
        StoreError: an output's blob is missing from the store.
    """
    from builder.errors import StoreError  # noqa: PLC0415

    blobs = project.store.blobs
    objects = {}
    for out in outputs:
        obj = blobs.path(out.digest)
        objects[out.path] = str(obj)
        target = project.root / out.path
        if target.is_file() and target.stat().st_size == out.size \
                and hashing.file_digest(target) == out.digest:
            continue
        if not obj.is_file():
            raise StoreError(f"the store has no blob for output {out.path} ({out.digest}); "
                             f"expected at {obj}", obj,
                             hint="train again with `repro run --no-cache`")
        with replacing(target) as tmp:
            shutil.copyfile(obj, tmp)
    return objects


def evaluate(project: Project, runner: Runner) -> dict[str, Any]:
    """Run `[reproducibility] evaluate` in the environment on the outputs now in the project.

    Returns the metrics it writes to REPRO_METRICS_FILE (builder.runtime.log_metrics does).

    Raises:
        BuildError: the command fails or writes no JSON object of metrics.
    """
    recipe, store = project.recipe, project.store
    argv = list(recipe.reproducibility.evaluate)
    runtime, _ = runtime_dir(store)
    runner.prepare()
    log.info("Evaluating %s: %s", recipe.name, " ".join(argv))
    with store.scratch() as tmp:
        metrics_file = tmp / "evaluation.json"
        params_file = tmp / "params.json"
        params_file.write_text("{}")
        code, tail = runner.execute(Job(argv, {}, recipe.root, runtime, params_file,
                                        metrics_file))
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
