"""`repro runbook`: a Markdown page that takes a person on a fresh machine to a recorded model.

Written from a run record, its recipe and lock, the committed baseline and the store's
verifications. Each step is a fenced `sh` block that runs as written, in order, in one shell
from an empty folder (the test suite does exactly that); what each step should give is stated
beside it: the env id, the run key and every output's BLAKE3 and sha256. The comparison of a
bitwise run is `sha256sum --check`, so the last word needs nothing of repro's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import shlex
from pathlib import Path
from typing import Any

from builder import __version__, baseline, lock, proc, run
from builder.errors import InputError
from builder.project import Project
from builder.records import RunRecord
from builder.resolve import MachineSources

log = logging.getLogger(__name__)
PACKAGE = "repro-builder"


def render(project: Project, digest: str, record: RunRecord, machine: MachineSources) -> str:
    """The runbook of one run of `project`'s recipe.

    Raises:
        InputError: the run is of another recipe, or failed.
    """
    recipe = project.recipe
    if record.recipe.name != recipe.name:
        raise InputError(f"run {digest} is of recipe {record.recipe.name!r}, not "
                         f"{recipe.name!r}", hint="give its recipe with -r PATH")
    if not record.succeeded:
        raise InputError(f"run {digest} failed; a runbook re-makes a good run",
                         hint="pick a succeeded run from `repro runs`")
    if record.env != project.lock.env_id:
        raise InputError(f"run {digest} was made in env {record.env}, and the lock here gives "
                         f"{project.lock.env_id}: the project changed since the run",
                         hint=f"check out commit {record.code.commit} and write it there, or "
                              "give a run of the current lock (`repro runs`)")
    flags = "".join(f" --find-links {shlex.quote(link)}" for link in machine.find_links)
    overrides = _overrides(project, record)
    parts = [
        f"# Runbook: re-make {recipe.name}, run {record.run_key[7:19]}",
        "",
        f"Written by repro {__version__} on {dt.datetime.now(dt.UTC):%Y-%m-%d} from record "
        f"`{digest}`. Run the `sh` blocks in order, in one shell, from an empty folder; each "
        "step says what it should give.",
        "",
        "## What you should get",
        "",
        *_expected(project, record),
        "",
        *_standard(project, record),
        "## 1. Prerequisites",
        "",
        *_prerequisites(project, record, machine),
        "## 2. Install repro",
        "",
        f"`REPRO_PACKAGE` may name a wheel file instead of the release ({PACKAGE} "
        f"{__version__} made this runbook).",
        "",
        "```sh",
        "python3 -m venv .repro-tool",
        f'.repro-tool/bin/pip install --quiet "${{REPRO_PACKAGE:-{PACKAGE}=={__version__}}}"',
        'export PATH="$PWD/.repro-tool/bin:$PATH"',
        "repro --version",
        "```",
        "",
        "## 3. Fetch the code and data",
        "",
        *_fetch(project, record),
        "## 4. Build the environment",
        "",
        f"Should give env `{record.env}` (`repro status` shows it).",
        "",
        "```sh",
        f"repro build --locked{flags}",
        "```",
        "",
        "## 5. Train",
        "",
        f"Without the cache, with the run's own seed ({record.seed}) and params. Should give "
        f"run key `{record.run_key}`" + (" on the same hardware class" if
                                         record.hardware_class else "") + ".",
        "",
        "```sh",
        f"repro run --locked --no-cache{flags}{overrides}",
        "```",
        "",
        "## 6. Compare",
        "",
        *_compare(project, record, flags),
    ]
    return "\n".join(parts).rstrip() + "\n"


def _overrides(project: Project, record: RunRecord) -> str:
    """The seed and params flags that give the record's own, where they are not the recipe's
    defaults."""
    train = project.recipe.train
    flags = "" if train is not None and record.seed == train.seeds[0] else \
        f" --seed {record.seed}"
    defaults = dict(train.params) if train is not None else {}
    changed = {k: v for k, v in record.params.items() if defaults.get(k) != v}
    return flags + "".join(f" -p {shlex.quote(p)}" for p in run.as_overrides(changed))


def _sha256(project: Project, digest: str) -> str:
    with project.store.blobs.checked_path(digest).open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _expected(project: Project, record: RunRecord) -> list[str]:
    hw = record.hardware
    rows = [
        ("recipe", f"`{record.recipe.digest}` ({record.recipe.name})"),
        ("code", f"`{record.code.digest}` ({record.code.files} "
                 + ("file" if record.code.files == 1 else "files")
                 + (f", commit `{record.code.commit}`" if record.code.commit else "") + ")"),
        *[(f"data.{n}", f"`{d.digest}` at {d.path}") for n, d in sorted(record.data.items())],
        ("env", f"`{record.env}`, Python {record.software.python}"),
        ("run key", f"`{record.run_key}`"),
        *[(f"output {o.path}", f"`{o.digest}` (sha256 `{_sha256(project, o.digest)}`, "
                               f"{o.size} bytes)") for o in record.outputs],
        *[(f"metric {k}", f"{v}") for k, v in sorted(record.metrics.items())],
        ("hardware class", _hardware_class(record.hardware_class)),
        ("made on", f"{hw['cpu']['model']}, {hw['cpu']['cores']} cores, "
                    f"{hw['os']['name'] or hw['os']['system']}, {record.started[:19]}Z, "
                    f"{record.duration:.2f}s"),
    ]
    return ["| step | should be |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


def _hardware_class(cls: dict[str, Any] | None) -> str:
    if not cls:
        return "none (the run key does not cover the machine: the standard is not bitwise)"
    gpus = ", ".join(cls.get("gpus") or []) or "no GPU"
    return f"{cls['arch']}, {cls['cpu']}, {gpus}"


def _standard(project: Project, record: RunRecord) -> list[str]:
    """What 'reproduced' means for this recipe, its baseline, declared non-determinism, and
    when it was last verified."""
    rep = project.recipe.reproducibility
    lines = [f"**Standard: {rep.standard}.** " + {
        "bitwise": "Same inputs on the same hardware class give the same bytes.",
        "statistical": "Re-runs over the recipe's seeds must keep each metric within its "
                       "tolerance of the baseline.",
        "functional": "The outputs must pass the recipe's evaluation, within tolerance.",
    }.get(rep.standard, ""), ""]
    if rep.tolerance:
        lines += [*[f"- tolerance {k}: " + ", ".join(
            f"{kind} {v}" for kind, v in (("abs", t.abs), ("rel", t.rel)) if v is not None)
            for k, t in sorted(rep.tolerance.items())], ""]
    if rep.nondeterminism:
        lines += ["Declared non-determinism (why it is acceptable):", "",
                  *[f"- {n.source}: {n.reason}" + (f" (metric {n.metric})" if n.metric else "")
                    for n in rep.nondeterminism], ""]
    elif rep.standard == "bitwise":
        lines += ["No non-determinism is declared: every byte is expected to match.", ""]
    try:
        base = baseline.load(project.recipe)
    except InputError:
        lines += ["No baseline is committed (`lockfiles/"
                  f"{project.recipe.name}/baseline.json`).", ""]
    else:
        where = f"`lockfiles/{project.recipe.name}/baseline.json`"
        mine = base.for_class(record.hardware_class)
        lines += [f"Baseline ({where}): {len(base.runs)} run(s) on {len(base.classes)} "
                  "hardware class(es)" + ("; none on this run's class, so a bitwise compare "
                                          "there has nothing to go by" if not mine else ""), ""]
        lines += [f"- seed {r.seed}: " + ", ".join(f"{k}={v}" for k, v in
                                                   sorted(r.metrics.items()))
                  + (" (the outputs match this run's)" if r.outputs == record.outputs else "")
                  for r in mine]
        lines += [""]
    checks = project.store.verifications.of(project.recipe.name)
    if checks:
        last = checks[-1]
        lines += [f"Last verified {last.started[:19]}Z: {last.verdict}, time to reproduce "
                  f"{last.total:.2f}s" + (f" (target {last.target:g}s)" if last.target else "")
                  + f"; {len(checks)} verification(s) in this store (`repro history`).", ""]
    else:
        lines += ["Not verified yet in the store this runbook was written from.", ""]
    if rep.target is not None:
        lines += [f"Time-to-reproduce target: {rep.target:g}s.", ""]
    return lines


def _prerequisites(project: Project, record: RunRecord, machine: MachineSources) -> list[str]:
    env = project.recipe.environment
    lines = [f"- Python {env.python} (the run used {record.software.python}) with venv, on "
             f"{env.platform}", "- git"]
    if record.runner == "image":
        lines.append("- buildah (the run was made inside the env's OCI image)")
    if record.sandbox == "bwrap":
        lines.append("- bubblewrap (`bwrap`): the run was sandboxed with it")
    if machine:
        lines.append("- the wheel folder this runbook was written with: "
                     + ", ".join(f"`{link}`" for link in machine.find_links)
                     + " (on another machine, change `--find-links` below)")
    else:
        lines.append("- network access to PyPI" + "".join(
            f" and {s.url}" for s in env.sources))
    if any(o.digest for o in record.outputs):
        lines.append("- sha256sum (coreutils), for the last check")
    return [*lines, "", "```sh", f"python{env.python} --version", "git --version", "```", ""]


def _fetch(project: Project, record: RunRecord) -> list[str]:
    root = project.recipe.root
    top = proc.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], check=False)
    commit = _commit(project, record) if top.returncode == 0 else None
    if commit is None:
        raise InputError(f"run {record.run_key[7:19]} was not made from a git commit, and no "
                         "commit here holds its code, so a fresh machine cannot fetch it by "
                         "a name", hint="commit the code it ran (then HEAD is named), or "
                                        "share the run with `repro push` and re-make it with "
                                        "`repro reproduce`")
    _committed(project, commit)
    toplevel = Path(top.stdout.strip())
    origin = proc.run(["git", "-C", str(toplevel), "remote", "get-url", "origin"], check=False)
    url = origin.stdout.strip() if origin.returncode == 0 else str(toplevel)
    inside = root.resolve().relative_to(toplevel.resolve())
    lines = []
    if origin.returncode != 0:
        lines += [f"The project has no git remote: it is cloned from `{url}` on the machine "
                  "this runbook was written on; give your team's URL instead.", ""]
    elif proc.run(["git", "-C", str(toplevel), "branch", "--quiet", "-r", "--contains",
                   commit], check=False).stdout.strip() == "":
        lines += [f"**Commit `{commit}` is on no branch of `{url}` yet**: push it there, or "
                  "the checkout below fails.", ""]
        log.warning("commit %s is on no branch of %s (as this clone last fetched it): push "
                    "it, or the runbook's checkout fails", commit[:12], url)
    if commit != record.code.commit:
        how = ("with uncommitted changes" if record.code.dirty else f"at {record.code.commit}"
               ) if record.code.commit else "outside git"
        lines += [f"The run was recorded {how}; commit `{commit}` holds the same code "
                  f"(`{record.code.digest}`).", ""]
    lines += ["```sh", f"git clone --quiet {shlex.quote(url)} project", "cd project",
              f"git -c advice.detachedHead=false checkout --quiet {commit}"]
    if str(inside) != ".":
        lines.append(f"cd {shlex.quote(str(inside))}")
    lines.append("```")
    notes = []
    for name, d in sorted(record.data.items()):
        if d.url:
            notes.append(f"- data.{name} is fetched by repro from {d.url} and checked against "
                         f"`{d.digest}`.")
            continue
        tracked = proc.run(["git", "-C", str(root), "ls-files", "--error-unmatch", "--",
                            d.path], check=False).returncode == 0
        notes.append(f"- data.{name} (`{d.path}`, `{d.digest}`) "
                     + ("comes with the clone." if tracked else
                        "is not in git: copy it there before step 4 (a copy with other bytes "
                        "gives another run key)."))
    return [*lines, "", *notes, *([""] if notes else [])]


def _committed(project: Project, commit: str) -> None:
    """The recipe and its lock as they are here must be in the commit a clone checks out
    (`repro build --locked` there gives this env only from this lock).

    Raises:
        InputError: one is missing from the commit, or differs from it.
    """
    recipe = project.recipe
    for path in (recipe.path, recipe.lock_dir / lock.PYLOCK, recipe.lock_dir / lock.REPRO_LOCK):
        git = ["git", "-C", str(path.parent)]
        there = proc.run([*git, "cat-file", "-e", f"{commit}:./{path.name}"], check=False)
        same = there.returncode == 0 and proc.run(
            [*git, "diff", "--quiet", commit, "--", path.name], check=False).returncode == 0
        if not same:
            raise InputError(
                f"{path} is {'not in' if there.returncode else 'not as in'} commit "
                f"{commit[:12]}, and a fresh clone builds from what the commit holds",
                hint=f"commit {path.relative_to(recipe.root)} (and push it), then write the "
                     "runbook again")


def _commit(project: Project, record: RunRecord) -> str | None:
    """The commit a clone should check out: HEAD where it holds the same code (and so the
    lock, baseline and recipe as they are now, which the env check agreed with), else the
    run's own commit when it was clean."""
    here = project.code
    if here.commit and not here.dirty and here.digest == record.code.digest:
        return here.commit
    if record.code.commit and not record.code.dirty:
        return record.code.commit
    return None


def _compare(project: Project, record: RunRecord, flags: str) -> list[str]:
    if project.recipe.reproducibility.standard == "bitwise" and record.outputs:
        listing = "\n".join(f"{_sha256(project, o.digest)}  {o.path}" for o in record.outputs)
        return ["The outputs, byte for byte (on another hardware class they may differ; "
                "`repro verify` then says the class differs).", "",
                "```sh", "sha256sum --check <<'EOF'", listing, "EOF", "```", ""]
    path = baseline.path_of(project.recipe)
    commit = _commit(project, record)
    if proc.run(["git", "-C", str(path.parent), "cat-file", "-e", f"{commit}:./{path.name}"],
                check=False).returncode != 0:
        raise InputError(f"{path} is not in commit {str(commit)[:12]}, and a fresh clone "
                         f"needs it: a {project.recipe.reproducibility.standard} run is "
                         "compared with its baseline", hint="`repro baseline set`, commit the "
                                                           "file, and write the runbook again")
    return ["Against the committed baseline, within the recipe's tolerances (exit 1 on drift).",
            "", "```sh", f"repro verify --locked{flags}", "```", ""]
