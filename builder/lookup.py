"""`repro lookup`, `repro runs`, `repro show`: find recorded runs by key, recipe or artefact."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from builder import hashing
from builder.errors import InputError, StoreError
from builder.image import index as images
from builder.project import Project
from builder.recipe import RECIPE_FILE, Recipe
from builder.records import RunRecord
from builder.store import Store

if TYPE_CHECKING:
    from builder.remote import Remote

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Found:
    """What a lookup found: how the target was read, its digest or key, and the runs."""

    kind: str  # "file", "recipe", "run" or "image"
    target: str
    digest: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    image: dict[str, str] = field(default_factory=dict)  # what an image says it was made of

    @property
    def found(self) -> bool:
        return bool(self.runs or self.image)

    def to_json(self) -> dict[str, Any]:
        return {"found": self.found, "kind": self.kind, "target": self.target,
                "digest": self.digest, "runs": self.runs, "image": self.image}


def summary(store: Store, digest: str, record: RunRecord | None = None) -> dict[str, Any]:
    """The part of a record a listing shows, with where each output lies in the store."""
    r = record or store.records.get(digest)
    try:
        answer = store.records.for_key(r.run_key) if r.succeeded else None
    except StoreError:  # a damaged pointer answers nothing
        answer = None
    return {
        "record": digest,
        "run_key": r.run_key,
        "recipe": r.recipe.name,
        "status": "succeeded" if r.succeeded else "failed",
        # what the cache serves for the key: False for a verification's re-run, or a run
        # whose env was found tampered (its answer dropped)
        "answers": answer == digest,
        "answered_by": answer,
        "seed": r.seed,
        "params": r.params,
        "started": r.started,
        "duration": r.duration,
        "metrics": r.metrics,
        "outputs": [{**o.to_json(), "object": str(store.blobs.path(o.digest))}
                    for o in r.outputs],
    }


def summaries(store: Store, digests: list[str]) -> list[dict[str, Any]]:
    """Summaries of the records that can be read; each one that cannot is named, not fatal."""
    rows = []
    for digest in digests:
        try:
            rows.append(summary(store, digest))
        except StoreError as exc:
            log.warning("%s", exc.message)
    return rows


def lookup(target: str | None, *, store: Store, recipe_hint: str | None = None,
           remote: Remote | None = None) -> Found:
    """Which runs match a target: a file (which run made it?), a recipe (is it trained?),
    a run key / record digest (whole or 8+ hex characters), or an image (an OCI layout
    folder, or a manifest digest repro built): which recipe, env and lock made it. What the
    store does not know is asked of the remote, when there is one (one GET per identity); a
    sha256 that names no image repro built may be an output's, by the remote's index.

    Raises:
        InputError: the target is none of these.
    """
    found = _local(target, store, recipe_hint)
    if found.found or remote is None or not found.digest:
        return found
    if found.kind == "image":  # a sha256 repro did not build: perhaps an output's
        if not re.fullmatch(r"sha256:[0-9a-f]{64}", found.target):
            return found
        answer = remote.safely("not found there", lambda: remote.producer(found.target), None)
        found = Found("file", found.target, found.target)
    elif found.kind == "file":
        answer = remote.safely("not found there", lambda: remote.producer(found.digest), None)
    else:  # a recipe's run key, or a whole run key
        answer = remote.safely("not found there", lambda: _remote_run(remote, found.digest),
                               None)
    if answer is None:
        return found
    row = {**summary(store, *answer), "remote": remote.url}
    return Found(found.kind, found.target, found.digest, [row])


def _remote_run(remote: Remote, run_key: str) -> tuple[str, RunRecord] | None:
    from builder.remote import Moved  # noqa: PLC0415

    hit = remote.find_run(run_key)
    return remote.record_of(run_key, hit[0], Moved()) if hit else None


def _local(target: str | None, store: Store, recipe_hint: str | None) -> Found:  # noqa: PLR0911
    if target is None:
        return _recipe_lookup(Project.open(recipe_hint, store=store, mode="locked"))
    path = Path(target)
    if (path / "oci-layout").is_file() or target.startswith("sha256:"):
        digest, labels = images.labels(path if path.is_dir() else target, store)
        return Found("image", target, digest, [], labels)
    if path.is_dir() or path.name == RECIPE_FILE:
        return _recipe_lookup(Project.open(path, store=store, mode="locked"))
    if path.is_file():
        digest = hashing.file_digest(path)
        return Found("file", target, digest, summaries(store, store.records.producing(digest)))
    record = store.records.find(target)
    if record is not None:
        return Found("run", target, record, [summary(store, record)])
    if re.fullmatch(r"(blake3:)?[0-9a-f]{64}", target):
        return Found("run", target, hashing.PREFIX + target.removeprefix(hashing.PREFIX), [])
    if re.fullmatch(r"(blake3:)?[0-9a-f]{8,63}", target):
        return Found("run", target, "", [])
    raise InputError(f"{target} is not a file, a recipe, or a run key",
                     hint="give a model file, a repro.toml (or its folder), or a run key")


def _recipe_lookup(project: Project) -> Found:
    from builder.run import plan  # noqa: PLC0415
    from builder.runner import VenvRunner  # noqa: PLC0415

    p = plan(project, VenvRunner(project))
    try:
        answer = project.store.records.answer(p.key)
        found = answer[0] if answer else None
    except StoreError as exc:
        log.warning("%s", exc.message)
        found = None
    return Found("recipe", str(project.recipe.path), p.key,
                 summaries(project.store, [found] if found else []))


def runs_of(recipe: Recipe, *, store: Store) -> list[dict[str, Any]]:
    """Every recorded run of a recipe (failed ones too), oldest first."""
    rows = summaries(store, store.records.of_recipe(recipe.name))
    return sorted(rows, key=lambda r: r["started"])


def show(
    ref: str | None, *, store: Store, recipe_hint: str | None = None
) -> tuple[str, RunRecord]:
    """A whole record, from a run key or record digest (or the recipe's latest run: a
    verification's re-run, which the cache never serves, is not a run of the recipe's own).

    Raises:
        InputError: nothing in the store matches.
    """
    if ref is None:
        recipe = Project.open(recipe_hint, store=store).recipe
        rows = [r for r in runs_of(recipe, store=store)
                if r["answers"] or r["status"] == "failed"]
        if not rows:
            raise InputError(f"{recipe.name} has no recorded runs", hint="run `repro run` first")
        ref = rows[-1]["record"]
    digest = store.records.find(ref)
    if digest is None:
        raise InputError(f"no run in {store.root} matches {ref!r}",
                         hint="give a run key or record digest (8+ hex digits); "
                              "`repro runs` lists them")
    return digest, store.records.get(digest)


def describe(digest: str, record: RunRecord) -> str:
    """A run record for a person: one line per fact."""
    hw, sw, code = record.hardware, record.software, record.code
    from builder.hardware import gpu_class  # noqa: PLC0415

    gpus = "".join(f", {gpu_class(g)} driver {g['driver']}" for g in hw["gpus"])
    status = f"exit {record.exit_status}" + (f": {record.error}" if record.error else "")
    return "\n".join([
        f"run      {record.run_key}",
        f"record   {digest}",
        f"recipe   {record.recipe.name}  {record.recipe.digest}  ({record.recipe.standard})",
        f"env      {record.env}  Python {sw.python}"
        + (f"  in image {sw.image}" if sw.image else ""),
        f"code     {code.digest}  commit {code.commit}{'  (dirty)' if code.dirty else ''}",
        *[f"data     {n}: {d.path}  {d.digest}" for n, d in sorted(record.data.items())],
        f"command  {' '.join(record.command)}",
        f"sandbox  {record.sandbox}, network {'reachable' if record.network else 'off'}"
        + (f", pass-env {', '.join(record.pass_env)}" if record.pass_env else ""),
        f"seed     {record.seed}   params {json.dumps(record.params, sort_keys=True)}",
        f"hardware {hw['arch']}, {hw['cpu']['model']}, {hw['cpu']['cores']} cores, "
        f"{(hw['memory_bytes'] or 0) / 2**30:.1f} GiB{gpus}",
        f"os       {hw['os']['name'] or hw['os']['system']}, {hw['libc']}",
        "packages " + ", ".join(f"{k} {v}" for k, v in sorted(sw.packages.items())),
        f"time     {record.started} -> {record.ended}  ({record.duration:.2f}s)",
        f"status   {status}",
        *[f"metric   {k} = {v}" for k, v in sorted(record.metrics.items())],
        *[f"output   {o.path}  {o.digest}  {o.size} bytes" for o in record.outputs],
    ])
