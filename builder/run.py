"""`repro run`: the run key, an answer from the store, or a seeded, recorded training run."""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, NoReturn

from builder import faults, hashing
from builder.blobs import Blobs
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
from builder.records import CodeFacts, DataFacts, Output, RecipeRef, RunRecord, load_object
from builder.runner import Job, Runner, runtime_dir

log = logging.getLogger(__name__)
_PLACEHOLDER = re.compile(r"\{([^{}]+)\}")  # names checked when the recipe was read
KEY_FORMAT = "repro.runkey/v2"  # v2: sandbox and network joined the key


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
    source: str = "local"  # where the answer came from: "local", "remote" or "trained"
    sandbox: Path | None = None  # the run's folder, when --keep-sandbox kept it

    def to_json(self) -> dict[str, Any]:
        r = self.record
        return {"run_key": r.run_key, "record": self.record_digest, "cached": self.cached,
                "source": self.source,
                "recipe": r.recipe.name, "env": r.env, "seed": r.seed,
                "params": r.params, "metrics": r.metrics, "duration": r.duration,
                "outputs": [{**o.to_json(), "object": self.objects.get(o.path)}
                            for o in r.outputs],
                **({"sandbox": str(self.sandbox)} if self.sandbox else {})}


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


def as_overrides(params: dict[str, Any]) -> list[str]:
    """`key=value` overrides that `resolve_params` reads back as these params."""
    return [f"{name}={_render(value)}" for name, value in sorted(params.items())]


def _parse_like(current: Any, text: str, name: str) -> Any:
    import math  # noqa: PLC0415

    try:
        if isinstance(current, bool):
            if text.lower() not in ("true", "false"):
                raise ValueError(text)
            return text.lower() == "true"
        if isinstance(current, int):
            value = int(text)
            if abs(value) >= 2**53:
                raise ValueError(text)
            return value
        if isinstance(current, float):
            number = float(text)
            if not math.isfinite(number):
                raise ValueError(text)
            return number
    except ValueError:
        raise InputError(f"--param {name}={text}: expected {type(current).__name__}, like the "
                         f"recipe's {current!r} (numbers finite, integers below 2^53)") from None
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
    whether it runs sandboxed and with the network, and the runner's identity (an image
    digest) when it has one."""
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
        # a run that could read undeclared files, or fetch, makes another claim
        "sandbox": train.sandbox,
        "network": train.network,
        # where it runs, when not in the env's virtualenv: an image digest
        **({"runner": where} if where else {}),
    })
    return Plan(project, train, env_id, values, chosen, klass, runner.kind, key)


def _answer(project: Project, key: str, *, say: bool = True) -> tuple[str, RunRecord] | None:
    """The recorded success of a run key, if the store has one it can read."""
    try:
        return project.store.records.answer(key)
    except StoreError as exc:
        if say:
            log.warning("%s; training again", exc.message)
        return None


def run(project: Project, runner: Runner, *, seed: int | None = None,
        params: Sequence[str] = (), use_cache: bool = True, place: bool = True,
        keep_sandbox: bool = False, answers: bool = True) -> RunResult:
    """Answer from the store when a run with the same key succeeded; else train and record.

    Without `answers` (verification re-runs), a new record answers its run key only where
    no run did before: a re-run that drifted never replaces the answer it is compared with.

    Runs of one key wait for one another (the first trains, the others answer from the
    store); runs of other keys go on in parallel, each in its own sandbox. With `place`, the
    outputs are put into the project afterwards (verification re-runs leave it alone).

    Raises:
        InputError: an output overlaps data, code, the lock or the recipe, or is a symlink.
        RunFailed: the command failed, or an output or the metrics file is missing or bad.
    """
    from builder.sandbox import asked_level, check_outputs  # noqa: PLC0415

    asked_level()  # a typo in REPRO_SANDBOX is said on a cache hit too
    p = plan(project, runner, seed=seed, params=params)
    check_outputs(project)  # before anything in the project is touched
    hit = _answer(project, p.key, say=False) if use_cache else None
    source = "local"
    if hit is None:
        with project.store.records.locked(p.key):
            hit = _answer(project, p.key) if use_cache else None
            if hit is None and use_cache and project.remote is not None:
                hit, source = project.remote.answer(p.key), "remote"
            if hit is None:
                runner.prepare()
                return _execute(p, runner, place=place, keep=keep_sandbox, answers=answers)
            if source == "local":
                log.info("Another run of this key finished while this one waited")
    digest, record = hit
    if not place:
        return RunResult(digest, record, cached=True,
                         objects={o.path: str(project.store.blobs.path(o.digest))
                                  for o in record.outputs}, source=source)
    try:
        objects = restore_outputs(project, record.outputs)
    except StoreError as exc:  # never served (a damaged blob is quarantined): made again
        again = None
        if project.remote is not None and source == "local":  # or fetched again, if shared
            log.warning("%s; asking the remote %s", exc.message, project.remote.url)
            again = project.remote.answer(p.key)
        if again is None:
            log.warning("%s; training again", exc.message)
            return run(project, runner, seed=seed, params=params, use_cache=False,
                       place=place, keep_sandbox=keep_sandbox)
        (digest, record), source = again, "remote"
        objects = restore_outputs(project, record.outputs)
    return RunResult(digest, record, cached=True, objects=objects, source=source)


def framework_facts(folder: Path) -> tuple[dict[str, Any], ...]:
    """The distinct facts the command's processes wrote (builder.runtime.record_facts), in a
    stable order; a file that is not a small JSON object is skipped (the command wrote it)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            if path.stat().st_size > 1 << 16:
                continue
            facts = load_object(path.read_bytes(), path)
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        found[hashing.digest_json(facts)] = facts
    return tuple(found[k] for k in sorted(found))


def seeded_env(p: Plan) -> dict[str, str]:
    """The variables repro sets for every run; these (and only these) go into the record."""
    from builder.sandbox import BASE_ENV  # noqa: PLC0415

    train = p.train
    seeded = {
        **BASE_ENV,
        "REPRO_SEED": str(p.seed),
        "PYTHONHASHSEED": str(p.seed % 2**32),
        "CUBLAS_WORKSPACE_CONFIG": ":4096:8",
        "REPRO_RUN_KEY": p.key,  # with the next three: what trackers tag their runs with
        "REPRO_ENV_ID": p.env_id,
        "REPRO_RECIPE_DIGEST": p.recipe.digest(),
        "REPRO_CODE_DIGEST": p.project.code.digest,
        **{f"REPRO_PARAM_{k.upper()}": _render(v) for k, v in p.params.items()},
        **{f"REPRO_DATA_{d.name.upper()}": d.path for d in p.recipe.data},
    }
    if train.threads:
        for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "REPRO_THREADS"):
            seeded[var] = str(train.threads)
    seeded.update(train.env)
    return seeded


def passed_env(train: Train) -> dict[str, str]:
    """`[train] pass-env`: the caller's values of the named variables (never recorded)."""
    import os  # noqa: PLC0415

    missing = [name for name in train.pass_env if name not in os.environ]
    if missing:
        log.warning("pass-env names %s, not set here: the command will not see %s",
                    ", ".join(missing), "it" if len(missing) == 1 else "them")
    return {name: os.environ[name] for name in train.pass_env if name in os.environ}


_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")


def _forms(value: str) -> set[str]:
    """A secret as a command may print it: as it is, in either case, JSON- or repr-escaped,
    URL-quoted, base64 (either alphabet), hex, and each line of a multi-line one. A command
    set on leaking it can always encode it some other way; these are the ones that happen."""
    import base64  # noqa: PLC0415
    import urllib.parse  # noqa: PLC0415

    raw = value.encode()
    forms = {value, value.upper(), value.lower(), json.dumps(value)[1:-1], repr(value)[1:-1],
             urllib.parse.quote(value), urllib.parse.quote_plus(value),
             base64.b64encode(raw).decode().rstrip("="),
             base64.urlsafe_b64encode(raw).decode().rstrip("="), raw.hex(), raw.hex().upper()}
    forms |= {line for line in value.splitlines() if len(line) >= 4}
    return {form for form in forms if len(form) >= 4}


def _redact(text: str, secrets: dict[str, str]) -> str:
    """The command's output with every pass-env value blotted out, before it is recorded
    (terminal escape codes go first: one in a secret's middle would split it)."""
    text = _ANSI.sub("", text)
    for name, value in secrets.items():
        for form in sorted(_forms(value), key=len, reverse=True):
            text = text.replace(form, f"[{name}]")
    return text


def _shown(argv: list[str], limit: int = 400) -> str:
    """A command line for a progress message: whole, or its start and how long it is."""
    text = " ".join(argv)
    return text if len(text) <= limit else f"{text[:limit]}… ({len(argv)} arguments)"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _missing_hint(project: Project, tail: str) -> str:
    """When a sandboxed command failed reading a project file the recipe does not declare:
    which one, and how to declare it."""
    root, declared = project.root, set(project.code.paths)
    declared |= {d.path for d in project.recipe.data}
    found = []
    for module in re.findall(r"No module named '([\w.]+)'", tail):
        top = module.split(".")[0]
        found += [rel for rel in (f"{top}.py", f"{top}/__init__.py") if (root / rel).exists()]
    for groups in re.findall(r"No such file or directory: '([^']+)'|can't open file "
                             r"'([^']+)'", tail):
        path = next(p for p in groups if p)
        rel = os.path.relpath(path, root) if os.path.isabs(path) else path
        if not rel.startswith("..") and (root / rel).exists():
            found.append(rel)
    outputs = {rel for rel in found if rel in train_of(project.recipe).outputs}
    if outputs:
        return (f"{', '.join(sorted(outputs))} is declared in train.outputs, so it is never "
                "code and a run cannot read it: outputs are what a run makes")
    missing = sorted({rel for rel in found if rel not in declared})
    if not missing:
        return ""
    return (f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} in the project but "
            "not in the run's sandbox, which holds only what the recipe declares: add "
            f"{'it' if len(missing) == 1 else 'them'} to [code] include (and `git add`: in a "
            "git repository only tracked files count), or declare data under [data]")


def _execute(p: Plan, runner: Runner, *, place: bool, keep: bool,
             answers: bool = True) -> RunResult:
    from builder.sandbox import from_file, placeable, read_output, sandbox  # noqa: PLC0415
    from builder.sandbox import place as put  # noqa: PLC0415

    project, recipe, train = p.project, p.recipe, p.train
    store = project.store
    runtime, runtime_digest = runtime_dir(store)
    argv = render_command(recipe, train, p.seed, p.params)
    secrets = passed_env(train)
    with sandbox(project, keep=keep) as box:
        if box.level == "off":  # the project is the working folder: a stale file must go
            for out in [*train.outputs, *([train.metrics] if train.metrics else [])]:
                (recipe.root / out).unlink(missing_ok=True)  # (check_outputs refused folders)
        log.info("Running %s (seed %d, run key %s, sandbox %s): %s", recipe.name, p.seed,
                 p.key[7:19], box.level, _shown(argv))
        (box.repro / "params.json").write_text(json.dumps(p.params, sort_keys=True))
        variables = seeded_env(p)
        job = Job(argv, variables, secrets, box, runtime, train.metrics, train.outputs)
        started, clock = _now(), time.perf_counter()
        code, tail = runner.execute(job)
        duration = round(time.perf_counter() - clock, 3)
        framework = framework_facts(box.facts)
        tail = _redact(tail, secrets)
        code_state = project.code
        record = RunRecord(
            run_key=p.key,
            recipe=RecipeRef(recipe.name, recipe.digest(), recipe.reproducibility.standard),
            env=p.env_id,
            code=CodeFacts(code_state.digest, code_state.files, code_state.commit,
                           code_state.dirty),
            data={d.name: DataFacts(d.path, project.data[d.name], d.url or None)
                  for d in recipe.data},
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
            sandbox=box.level if p.runner != "image" or box.level == "off" else "image",
            network=runner.reaches_network(box),
            pass_env=tuple(train.pass_env),
            framework=framework,
        )
        changed = runner.intact()
        if changed is not None:  # never its key's answer: the next run rebuilds the env
            _fail(project, record, f"{changed} while the command ran; the run is not recorded "
                                   "as its key's answer",
                  hint="a command must not write into its environment; run it again (the "
                       "environment is rebuilt)")
        if code != 0:
            ended = f"was killed by signal {-code}" if code < 0 else f"exited with status {code}"
            _fail(project, record, f"the training command {ended}:\n{tail.rstrip()}",
                  hint=_missing_hint(project, tail)
                  or "fix the command or the code; nothing was stored as a success")
        made = {}
        for out in train.outputs:
            try:
                path = read_output(box, out)
            except InputError as exc:
                _fail(project, record, exc.message, hint=exc.hint, exit_code=EXIT_INPUT)
            if not path.is_file():
                _fail(project, record, f"the command did not produce the declared output {out}",
                      hint=f"write {out} (relative to the project folder), or fix "
                           "train.outputs")
            made[out] = path
        faults.point("run-trained")
        metrics_file = read_output(box, train.metrics) if train.metrics else None
        metrics = _read_metrics(project, record, metrics_file, secrets) if metrics_file else {}
        stored = {out: store.blobs.put_file(path) for out, path in made.items()}  # one read
        outputs = tuple(Output(out, s.digest, s.size) for out, s in stored.items())
        record = _with(record, outputs=outputs, metrics=metrics)
        objects = {o.path: str(store.blobs.path(o.digest)) for o in outputs}
        digest = store.records.add(record, answers=answers)
        if place and box.level != "off":
            placed = [(o.path, made[o.path]) for o in outputs]
            if metrics_file is not None and train.metrics:
                placed.append((train.metrics, metrics_file))
            for rel, _ in placed:  # all or nothing: every path checked before any is placed
                placeable(project.root, rel)
            for rel, source in placed:
                put(project.root, rel, from_file(source))
    return RunResult(digest, record, cached=False, objects=objects, source="trained",
                     sandbox=box.root if keep else None)


def _with(record: RunRecord, **changes: Any) -> RunRecord:
    from dataclasses import replace  # noqa: PLC0415

    return replace(record, **changes)


def _not_a_number(constant: str) -> Any:
    raise ValueError(f"{constant} is not a finite number (a diverged training?)")


def _read_metrics(project: Project, record: RunRecord, path: Path,
                  secrets: dict[str, str]) -> dict[str, Any]:
    try:
        metrics = json.loads(path.read_text(), parse_constant=_not_a_number)
    except FileNotFoundError:
        _fail(project, record, f"the command did not write its metrics file {path.name}",
              hint="write it (builder.runtime.log_metrics does), or drop train.metrics")
    except (ValueError, UnicodeDecodeError) as exc:
        _fail(project, record, f"the metrics file {path.name} is not valid JSON: {exc}",
              hint="write a JSON object of metric names to numbers")
    if not isinstance(metrics, dict):
        _fail(project, record, f"the metrics file {path.name} holds {type(metrics).__name__}, "
                               "not a JSON object", hint='write {"accuracy": 0.9, …}')
    try:
        text = hashing.canonical_json(metrics).decode()
    except InputError as exc:
        _fail(project, record, f"the metrics file {path.name} holds a number a record cannot: "
                               f"{exc.message}", hint="write metrics as floats (or strings)")
    leaked = [name for name, value in secrets.items()
              if any(form in text for form in _forms(value))]
    if leaked:
        _fail(project, record, f"the metrics file {path.name} holds the value of pass-env "
                               f"{', '.join(leaked)}; it would be written into the record",
              hint="log metrics, not credentials")
    return metrics


def _fail(project: Project, record: RunRecord, message: str, *, hint: str,
          exit_code: int | None = None) -> NoReturn:
    failed = _with(record, exit_status=record.exit_status or 1, error=message)
    raise RunFailed(message, project.store.records.add(failed), hint=hint,
                    **({"exit_code": exit_code} if exit_code else {}))


def restore_outputs(project: Project, outputs: Sequence[Output]) -> dict[str, str]:
    """Put a recorded run's outputs back in the project (copies, checked against their
    digests as they are copied), unless already there.

    Raises:
        StoreError: an output's blob is missing from the store.
        CorruptBlob: an output's blob failed its digest (quarantined; the project keeps what
            it had).
    """
    from builder.sandbox import place  # noqa: PLC0415

    blobs = project.store.blobs
    declared = set(train_of(project.recipe).outputs)
    objects = {}
    for out in outputs:
        if out.path not in declared:  # a record from elsewhere: its paths are not trusted
            raise StoreError(f"a stored record names the output {out.path!r}, which "
                             f"{project.recipe.path} does not declare; nothing was restored")
        obj = blobs.path(out.digest)
        objects[out.path] = str(obj)
        target = project.root / out.path
        if target.is_file() and not target.is_symlink() and target.stat().st_size == out.size \
                and hashing.file_digest(target) == out.digest:
            continue
        if not obj.is_file():
            raise StoreError(f"the store has no blob for output {out.path} ({out.digest}); "
                             f"expected at {obj}", obj,
                             hint="train again with `repro run --no-cache`")
        place(project.root, out.path, functools.partial(_copy_blob, blobs, out.digest))
    return objects


def _copy_blob(blobs: Blobs, digest: str, dest: BinaryIO) -> None:
    blobs.copy_to(digest, dest)


EVALUATION = ".repro-evaluation.json"  # where an evaluate command's metrics go, in its sandbox


def evaluate(project: Project, runner: Runner, outputs: Sequence[Output]) -> dict[str, Any]:
    """Run `[reproducibility] evaluate` in a sandbox holding the code, the data and these
    outputs (from the store); the project is not touched.

    Returns the metrics it writes to REPRO_METRICS_FILE (builder.runtime.log_metrics does).

    Raises:
        BuildError: the command fails or writes no JSON object of metrics.
        StoreError: an output's blob is not in the store.
    """
    from builder.sandbox import sandbox  # noqa: PLC0415

    recipe, store = project.recipe, project.store
    argv = list(recipe.reproducibility.evaluate)
    runtime, _ = runtime_dir(store)
    runner.prepare()
    for out in outputs:
        if not store.blobs.has(out.digest):
            raise StoreError(f"the store has no blob for output {out.path} ({out.digest}) to "
                             "evaluate", store.blobs.path(out.digest))
    log.info("Evaluating %s: %s", recipe.name, " ".join(argv))
    extra = [(store.blobs.checked_path(o.digest), o.path) for o in outputs]
    with sandbox(project, extra=extra) as box:
        (box.repro / "params.json").write_text("{}")
        code, tail = runner.execute(Job(argv, {}, passed_env(train_of(recipe)), box, runtime,
                                        EVALUATION))
        if code != 0:
            raise BuildError(f"the evaluation command exited with status {code}:\n{tail}",
                             hint=_missing_hint(project, tail) or "fix reproducibility.evaluate")
        try:
            metrics = json.loads((box.work / EVALUATION).read_text())
        except (OSError, ValueError) as exc:
            raise BuildError(f"the evaluation command wrote no JSON metrics: {exc}",
                             hint="write them with builder.runtime.log_metrics") from exc
    if not isinstance(metrics, dict):
        raise BuildError("the evaluation metrics are not a JSON object")
    return metrics
