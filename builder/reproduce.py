"""`repro reproduce TARGET`: from a model file, an output digest, a run key or a record digest,
re-make the run in a fresh folder and say whether it reproduced.

    find     which run made it: the store, then the remote's reverse index (one GET each)
    fetch    the run's record and outputs, its code snapshot (code, recipe, lock), baseline
             and data, each checked against the signed manifest (builder/remote.py)
    place    a fresh project folder: the snapshot, the data at their recorded paths, and a
             git index holding exactly the code files, so the code digest is the run's
    verify   build the environment from the lock, re-train without the cache and compare,
             as `repro verify` does (builder/verify.py): bitwise against the run's own
             outputs; statistical and functional against the pushed baseline, else against
             the run's own metrics (and the report says so)

Nothing here trusts a path the remote names: the recipe and lock go where the parsed recipe
puts them, archives are unpacked with tarfile's `data` filter, and data land at the record's
paths only inside the new folder.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from builder import hashing, proc, run
from builder.errors import InputError, MissingPart, NothingMatches, RegistryError, StoreError
from builder.records import RunRecord
from builder.resolve import NO_MACHINE_SOURCES, MachineSources
from builder.store import Store, remove_tree
from builder.verdicts import OutputCheck, Verification

if TYPE_CHECKING:
    from builder.recipe import Recipe
    from builder.remote import Moved, Remote

log = logging.getLogger(__name__)
_SHA256 = re.compile(r"sha256:[0-9a-f]{64}")
_BLAKE3 = re.compile(r"(blake3:)?[0-9a-f]{64}")
_PREFIX = re.compile(r"(blake3:)?[0-9a-f]{8,63}")


@dataclass(frozen=True)
class Found:
    """The run a target names: its record, and where it was found."""

    record_digest: str
    record: RunRecord
    where: str  # "local", or the remote's url
    manifest: dict[str, Any] | None = None  # the run's signed manifest, when it came from one


@dataclass(frozen=True)
class Reproduction:
    """What `reproduce` did: the run it re-made, where, and the verdict."""

    target: str
    found: Found
    folder: Path  # the fresh project (its recipe is there)
    report: Verification
    remade: dict[str, str]  # output path → the re-made output's digest (the run's seed)

    @property
    def reproduced(self) -> bool:
        return self.report.reproduced

    def outputs(self) -> list[dict[str, Any]]:
        checks = {c.name: c for c in self.report.checks if isinstance(c, OutputCheck)}
        rows = []
        for out in self.found.record.outputs:
            check = checks.get(out.path)
            rows.append({"path": out.path, "expected": out.digest, "size": out.size,
                         "remade": self.remade.get(out.path),
                         "identical": self.remade.get(out.path) == out.digest,
                         **({"detail": check.detail} if check else {})})
        return rows

    def to_json(self) -> dict[str, Any]:
        r = self.found.record
        return {"verdict": self.report.verdict, "target": self.target, "run_key": r.run_key,
                "record": self.found.record_digest, "recipe": r.recipe.name,
                "standard": self.report.standard, "found": self.found.where,
                "folder": str(self.folder), "outputs": self.outputs(),
                "timings": self.report.timings, "verification": self.report.to_json()}


def reproduce(target: str, *, store: Store, remote: Remote | None, folder: Path | None = None,
              machine: MachineSources = NO_MACHINE_SOURCES, offline: bool = False,
              where: str = "venv", supplied: Mapping[str, Path] | None = None) -> Reproduction:
    """Re-make the run that made `target` in a fresh folder and compare.

    target: a model file, an output digest (blake3:… or sha256:…), a run key or a record
        digest. folder: where to place the project (absent or empty; default a new temp
        folder, kept). supplied: local copies of data inputs the remote does not hold.

    Raises:
        NothingMatches: no run here or on the remote made or is `target`.
        MissingPart: the run's code snapshot, a data input or a blob is not to be had.
        InputError: the target or the folder is not usable.
        RegistryError, FetchError, BuildError, RunFailed: a fetch, build or re-run failed.
    """
    from builder.project import Options, Project  # noqa: PLC0415
    from builder.runner import VenvRunner  # noqa: PLC0415
    from builder.schema import load_recipe  # noqa: PLC0415
    from builder.verify import verify  # noqa: PLC0415

    clock = time.perf_counter()
    if folder is not None:
        _usable(folder, store)  # before anything is fetched
    found = find(target, store, remote)
    record = found.record
    if not record.succeeded:
        raise InputError(f"run {found.record_digest} failed; only a successful run can be "
                         "reproduced", hint="`repro runs` lists the recorded runs")
    log.info("Reproducing run %s of %s (found %s)", record.run_key[7:19], record.recipe.name,
             "in the store" if found.where == "local" else f"on {found.where}")
    manifest = _manifest(found, remote)
    assert remote is not None  # noqa: S101  (_manifest needs one)
    existed = folder is not None and folder.exists()
    root = _new_folder(folder, record, store)
    try:
        recipe_path = place(remote, store, record, manifest, root, supplied or {})
    except BaseException:  # a half-placed project is no use, and would block a retry
        _clear(root, made=not existed)
        raise
    recipe = load_recipe(recipe_path)
    fetched = round(time.perf_counter() - clock, 3)

    project = Project(recipe, store, Options("locked", offline, machine))
    project.remote = remote
    if where == "image":
        from builder.image.runner import ImageRunner  # noqa: PLC0415

        runner: Any = ImageRunner(project)
    else:
        runner = VenvRunner(project)
    standard = recipe.reproducibility.standard
    baseline_here = (recipe.lock_dir / "baseline.json").is_file()
    against = found.record_digest if standard == "bitwise" or not baseline_here else None
    note = "" if standard == "bitwise" or baseline_here else (
        "the run's snapshot holds no baseline: compared with the run's own record (its "
        "metrics), with the recipe's tolerances")
    mine = against is not None  # then re-run the run's own seed and params, as it was made
    try:
        report = verify(project, runner, against=against, timings={"fetch": fetched},
                        note=note, seed=record.seed if mine else None,
                        params=run.as_overrides(record.params) if mine else ())
    except BaseException:  # no verdict (the env did not build…): the same -o for a retry
        _clear(root, made=not existed)
        log.warning("%s was emptied: what was placed there is made again by a retry", root)
        raise
    remade = {}
    first = next((r for r in report.runs if r.seed == record.seed), None)
    if first is not None:  # the re-made model, where the run would have put it
        outputs = store.records.get(first.record).outputs
        remade = {o.path: o.digest for o in outputs}
        run.restore_outputs(project, outputs)
    return Reproduction(target, found, recipe_path.parent, report, remade)


# -- find ---------------------------------------------------------------------------------
def find(target: str, store: Store, remote: Remote | None) -> Found:
    """The run a target names, from the store, else the remote.

    Raises:
        InputError: the target is none of the forms. NothingMatches: no run matches it.
    """
    path = Path(target)
    tagged = None if path.exists() else \
        re.fullmatch(r"(?:run|out)-(sha256-)?([0-9a-f]{64})", target)  # `remote ls` names
    if tagged:
        target = ("sha256:" if tagged.group(1) else hashing.PREFIX) + tagged.group(2)
    if path.is_file():
        digests, what = [hashing.file_digest(path)], f"the file {target}"
    elif _SHA256.fullmatch(target):
        digests, what = [target], f"output {target}"
    elif _BLAKE3.fullmatch(target):
        digests = [hashing.PREFIX + target.removeprefix(hashing.PREFIX)]
        what = f"{digests[0]} (an output, run key or record digest)"
    elif _PREFIX.fullmatch(target):
        named = store.records.find(target)  # a run key or record prefix, as `repro runs` shows
        if named is None:
            raise NothingMatches(f"no run or record in {store.root} starts with {target}",
                                 hint="give the whole digest (blake3:…) to ask the remote too")
        key = store.records.get(named).run_key
        whole = key if key.removeprefix(hashing.PREFIX).startswith(
            target.removeprefix(hashing.PREFIX)) else named  # a run key's: its first record
        digests, what = [whole], f"{whole} ({target})"
    elif path.exists():
        raise InputError(f"{target} is {'a folder' if path.is_dir() else 'not a regular file'}"
                         "; reproduce takes a model file",
                         hint="give the file a run made, or its digest")
    else:
        raise InputError(f"{target} is not a file, an output digest (blake3:… or sha256:…), "
                         "a run key or a record digest", hint="e.g. repro reproduce model.pt, "
                                                             "or repro reproduce blake3:…")
    local = _local(digests[0], store)
    if local is not None:
        return local
    if remote is not None:
        found = _remote(digests[0], remote)
        if found is not None:
            return found
    raise NothingMatches(f"no recorded run made or is {what}: not in {store.root}"
                         + (f" nor on {remote.url}" if remote else ""),
                         hint="give the remote that holds it (--remote HOST/PATH) and trust "
                              "its signer (--trust KEY)" if remote is None else
                              "check the digest; `repro remote ls` lists what the remote has")


def _local(digest: str, store: Store) -> Found | None:
    """The first successful run that made an output, or a record, or the first successful
    run of a run key: a later re-run (reproduce's and verify's own) never becomes what a
    target is compared with."""
    records = store.records
    if digest.startswith("sha256:"):
        known = store.blobs.by_sha256(digest)
        if known is None:
            return None
        digest = known
    made = _succeeded(store, records.producing(digest))
    if made:
        return Found(*min(made, key=lambda m: m[1].started), "local")
    # a run key or a record digest (a sha256 names an output only)
    named = None if digest.startswith("sha256:") else records.find(digest)
    if named is None:
        return None
    record = records.get(named)
    if digest == named:
        return Found(named, record, "local")
    if digest != record.run_key:
        return None
    runs = [(d, r) for d, r in _succeeded(store, records.of_recipe(record.recipe.name))
            if r.run_key == digest] or [(named, record)]
    return Found(*min(runs, key=lambda m: m[1].started), "local")


def _succeeded(store: Store, digests: list[str]) -> list[tuple[str, RunRecord]]:
    found = []
    for digest in digests:
        try:
            record = store.records.get(digest)
        except StoreError as exc:
            log.warning("%s", exc.message)
            continue
        if record.succeeded:
            found.append((digest, record))
    return found


def _remote(digest: str, remote: Remote) -> Found | None:
    """By the remote's reverse index (an output), then as a run key: one GET each."""
    from builder.remote import Moved  # noqa: PLC0415

    answer = remote.producer(digest)
    if answer is None and digest.startswith(hashing.PREFIX):
        hit = remote.find_run(digest)
        answer = remote.record_of(digest, hit[0], Moved()) if hit else None
    if answer is None:
        return None
    return Found(answer[0], answer[1], remote.url)


def _manifest(found: Found, remote: Remote | None) -> dict[str, Any]:
    """The run's signed manifest on the remote: it names the snapshot and data blobs.

    Raises:
        MissingPart: no remote, or the remote has no such run.
    """
    key = found.record.run_key
    if remote is None:
        raise MissingPart(f"run {key} is in this store, but its code snapshot is kept only "
                          "by a remote cache, and none is configured",
                          hint="give the remote it was pushed to (--remote HOST/PATH), or push "
                               "it first from the project it was made in (`repro push`)")
    hit = remote.find_run(key)
    if hit is None:
        raise MissingPart(f"{remote.url} has no run {key} (this store has its record): its "
                          "code snapshot is not to be had",
                          hint="push it from the project it was made in: `repro push "
                               f"{key[7:19]}` there")
    return hit[0]


# -- place --------------------------------------------------------------------------------
def _new_folder(folder: Path | None, record: RunRecord, store: Store) -> Path:
    """The folder to re-make the run in: absent or empty (never over anything), or a new
    temp folder.

    Raises:
        InputError: it is not usable, or cannot be made.
    """
    if folder is None:
        return Path(tempfile.mkdtemp(prefix=f"repro-reproduce-{record.recipe.name}-"))
    _usable(folder, store)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"-o {folder}: cannot make it: {exc.strerror or exc}",
                         hint="give a new or empty folder you can write to") from exc
    return folder.resolve()


def _clear(root: Path, *, made: bool) -> None:
    """Empty a folder placement failed in (it was empty: `_usable` saw to that)."""
    for child in root.iterdir():
        if child.is_dir() and not child.is_symlink():
            remove_tree(child)
        else:
            child.unlink()
    if made:
        root.rmdir()


def _usable(folder: Path, store: Store) -> None:
    """
    Raises:
        InputError: `folder` exists and is not an empty folder, is a link to nowhere, or is
            in the store (or holds it): gc and `cache verify --repair` would remove it.
    """
    if folder.is_symlink() and not folder.exists():
        raise InputError(f"-o {folder}: a symbolic link to {os.readlink(folder)}, which does "
                         "not exist", hint="give a new or empty folder, or make the link's "
                                           "target first")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise InputError(f"-o {folder}: not an empty folder; reproduce writes a whole project "
                         "and never over anything", hint="give a new or empty folder")
    where, home = folder.resolve(), store.root.resolve()
    if where.is_relative_to(home) or home.is_relative_to(where):
        raise InputError(f"-o {folder}: inside the store {home} (or holding it); the store "
                         "keeps only what it names by digest, and would remove the project",
                         hint="give a folder outside REPRO_HOME")


def _layers(manifest: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [x for x in manifest.get("layers") or [] if isinstance(x, dict)
            and (x.get("annotations") or {}).get("dev.repro.role") == role]


def place(remote: Remote, store: Store, record: RunRecord, manifest: dict[str, Any],
          folder: Path, supplied: Mapping[str, Path]) -> Path:
    """Pull the run (record, outputs) and its snapshot, and lay the project out in `folder`.
    Returns the recipe's path.

    Raises:
        MissingPart: the snapshot or a data input is missing, or cannot be placed safely.
    """
    from builder.remote import TITLE, Moved  # noqa: PLC0415

    key = record.run_key
    unknown = sorted(set(supplied) - set(record.data))
    if unknown:
        raise InputError(f"--data {unknown[0]}: run {key} has no data input of that name",
                         hint="its data inputs: " + (", ".join(sorted(record.data)) or "none"))
    left_out = ", ".join(
        str((manifest.get("annotations") or {}).get("dev.repro.left-out", "")).split(","))
    code = _layers(manifest, "code")
    if not code:
        raise MissingPart(f"{remote.url}: run {key} has no code snapshot"
                          + (f" (pushed without its {left_out}: the project had changed since "
                             "the run)" if left_out else ""),
                          hint="push it again from a checkout of the commit it was made from")
    moved = Moved()
    try:  # the record and outputs, indexed: what bitwise compares
        remote.pull_run(key, moved=moved)
    except RegistryError as exc:
        raise RegistryError(f"the record and outputs of run {key} could not be fetched: "
                            f"{exc.message}",
                            hint=exc.hint or "push the run again from its project") from exc
    depth = _depth(record)
    root = folder.joinpath(*["project"] * depth)
    root.mkdir(parents=True, exist_ok=True)
    snapshot = _unpack(store, _pull(remote, code[0], moved, f"the code snapshot of run {key}"),
                       root, "the code snapshot")
    title = (_layers(manifest, "recipe") or [{}])[0].get("annotations", {}).get(TITLE, "")
    recipe_path = root / (title if re.fullmatch(r"[\w.-]+\.toml", title or "") else "repro.toml")
    if not recipe_path.is_file():
        raise MissingPart(f"{remote.url}: the code snapshot of run {key} holds no "
                          f"{recipe_path.name}", hint="push the run again from its project")
    from builder.schema import load_recipe  # noqa: PLC0415

    recipe = load_recipe(recipe_path)
    for layer in _layers(manifest, "baseline")[:1]:
        _write_blob(store, _pull(remote, layer, moved, f"the baseline of run {key}"),
                    recipe.lock_dir / "baseline.json")
    data = {str((x.get("annotations") or {}).get("dev.repro.data")): x
            for x in _layers(manifest, "data")}
    urls = {d.name for d in recipe.data if d.url}
    for name, facts in sorted(record.data.items()):
        dest = Path(os.path.normpath(root / facts.path))
        if not dest.is_relative_to(folder) or dest == folder:
            raise MissingPart(f"data.{name} was read from {facts.path}, outside the project: "
                              "a fresh folder cannot hold it",
                              hint="declare data inside the project, or by url and digest")
        if name in supplied:
            _copy_supplied(name, facts.digest, supplied[name], dest)
            if name in urls:  # the run reads a URL input from the store: the copy goes there
                store.blobs.put_file(supplied[name], facts.digest, sha256=True)
        elif name in data:
            _place_data(remote, store, data[name], dest, moved,
                        f"data.{name} ({facts.path}) of run {key}", has_url=name in urls)
        elif name not in urls:
            raise MissingPart(f"data.{name} is not on {remote.url} (the run was pushed "
                              f"{'with --no-data' if 'data' in left_out else 'without it'}) "
                              "and the recipe names no url for it; it was last read at "
                              f"{facts.path} ({facts.digest})",
                              hint=f"give a copy of it: --data {name}=PATH")
    code_files = _track(root, recipe, record, snapshot)
    log.info("Placed run %s in %s: %d code files, %d data inputs (%d blobs, %d bytes "
             "fetched)", key[7:19], root, code_files, len(record.data), moved.blobs,
             moved.bytes)
    return recipe_path


def _place_data(remote: Remote, store: Store, layer: dict[str, Any], dest: Path, moved: Moved,
                what: str, *, has_url: bool) -> None:
    """A pushed data input at `dest` (a folder from a tar); one the recipe names by URL is
    left to be fetched from there when the remote fails to give it."""
    try:
        blob = _pull(remote, layer, moved, what)
    except RegistryError as exc:
        if not has_url:
            raise
        log.warning("%s; it is fetched from its URL instead", exc.message)
        return
    if layer.get("mediaType") == "application/vnd.repro.data.v1.tar+gzip":
        _unpack(store, blob, dest, what)
    else:
        _write_blob(store, blob, dest)


def _pull(remote: Remote, layer: dict[str, Any], moved: Moved, what: str) -> str:
    """A layer's blob into the store, checked; a failure names the part it was.

    Raises:
        RegistryError: the remote lacks it, failed, or served other bytes.
    """
    try:
        return remote.fetch(layer, moved)
    except RegistryError as exc:
        raise RegistryError(f"{what} could not be fetched: {exc.message}",
                            hint=exc.hint or "push the run again from its project") from exc


def _depth(record: RunRecord) -> int:
    """How many folders above the project the recorded data reach (`../x` is one).

    Raises:
        MissingPart: a data input was read at an absolute path.
    """
    deepest = 0
    for name, facts in record.data.items():
        if PurePosixPath(facts.path).is_absolute():
            raise MissingPart(f"data.{name} was read from the absolute path {facts.path}: a "
                              "fresh folder cannot hold it",
                              hint="declare data inside the project, or by url and digest")
        parts = PurePosixPath(os.path.normpath(facts.path)).parts
        deepest = max(deepest, next((i for i, p in enumerate(parts) if p != ".."), len(parts)))
    return deepest


def _unpack(store: Store, blob: str, dest: Path, what: str) -> list[str]:
    """A gzipped tar from the store into `dest`, refusing anything that would land outside it
    (absolute names, `..`, links out, devices). Returns the files and links it held."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        with tarfile.open(store.blobs.checked_path(blob), "r:gz") as tar:
            for member in tar.getmembers():  # repro writes plain relative names, nothing else
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts:
                    raise tarfile.TarError(f"it holds the name {member.name!r}")
            tar.extractall(dest, filter="data")
            return sorted(os.path.normpath(m.name) for m in tar.getmembers()
                          if m.isfile() or m.issym())
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise MissingPart(f"{what} cannot be unpacked safely into {dest}: {exc}",
                          hint="it holds a path or link that leaves the project; push the run "
                               "again from its project") from exc


def _write_blob(store: Store, blob: str, dest: Path) -> None:
    from builder.store import replacing  # noqa: PLC0415

    dest.parent.mkdir(parents=True, exist_ok=True)
    with replacing(dest) as tmp, tmp.open("wb") as f:
        store.blobs.copy_to(blob, f)


def _copy_supplied(name: str, digest: str, source: Path, dest: Path) -> None:
    """A data input the user gave (--data NAME=PATH), copied in once it has the run's digest.

    Raises:
        InputError: it is missing, or other bytes.
    """
    if source.is_file():
        got = hashing.file_digest(source)
    elif source.is_dir():
        got = hashing.tree_digest(source, hashing.walk_files(source))
    elif source.exists():
        raise InputError(f"--data {name}={source}: not a regular file or folder")
    else:
        raise InputError(f"--data {name}={source}: no such file or folder")
    if got != digest:
        raise InputError(f"--data {name}={source} is {got}, not the {digest} the run read",
                         hint="give the copy of the data the run was made from")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.is_dir():
        shutil.copytree(source, dest, symlinks=True)
    else:
        shutil.copyfile(source, dest)


def _track(root: Path, recipe: Recipe, record: RunRecord, snapshot: list[str]) -> int:
    """Make `root` a git work tree whose index holds exactly the run's code files (the
    snapshot's files that `[code]` selects, with or without the recipe file, which a snapshot
    always holds: whichever gives the recorded code digest), so `repro` there computes the
    run's code digest. Everything else (data, the lock) is kept out of git's view. Returns
    how many files are tracked."""
    from builder import inputs  # noqa: PLC0415

    chosen = [rel for rel in snapshot if inputs.selects(recipe, rel)]
    if hashing.tree_digest(root, chosen) != record.code.digest:
        without = [rel for rel in chosen if rel != recipe.path.name]
        if hashing.tree_digest(root, without) == record.code.digest:
            chosen = without
    proc.run(["git", "-C", str(root), "init", "-q"])
    ignored = sorted(set(hashing.walk_files(root, [".git"])) - set(chosen))
    (root / ".git" / "info").mkdir(parents=True, exist_ok=True)
    (root / ".git" / "info" / "exclude").write_text("".join(f"/{rel}\n" for rel in ignored))
    if chosen:
        proc.run(["git", "-C", str(root), "add", "-f", "--", *chosen])
    return len(chosen)
