"""`repro init`: a first `repro.toml` for a project that has none, from what it holds.

    dependencies   requirements*.txt, pyproject.toml [project] dependencies, setup.cfg
                   install_requires, environment.yml's pip list; torch and its family from
                   the PyTorch index of the declared accelerator (CPU: +cpu pins)
    entry point    the file with `if __name__ == "__main__"` and argparse flags (train*.py
                   first); --seed → {seed}; flags whose default is a file or folder here →
                   [data]; others with a literal default → [train] params; a default that
                   would never end (a step count of -1) is replaced and said in a comment
    outputs        torch.save / np.save / np.savez targets the code names (through the flags
                   that name folders)

Written with tomlkit, commented where a person must decide. Nothing is changed in a project
that has a recipe unless `force`.
"""

from __future__ import annotations

import ast
import configparser
import datetime as dt
import os
import re
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import pyscan
from builder.errors import InputError

TORCH_FAMILY = ("torch", "torchvision", "torchaudio", "torchtext", "torchdata")
TORCH_CPU = "https://download.pytorch.org/whl/cpu"
_ENDLESS = re.compile(r"(steps|epochs|iters|iterations)$")
_SAVES = ("torch.save", "numpy.save", "numpy.savez", "numpy.savez_compressed",
          "joblib.dump", "pickle.dump")


@dataclass(frozen=True)
class Written:
    path: Path
    entry: str
    dependencies: tuple[str, ...]
    data: dict[str, str]
    params: dict[str, Any]
    outputs: tuple[str, ...]
    notes: tuple[str, ...]  # what a person should decide (also comments in the file)

    def to_json(self) -> dict[str, Any]:
        return {"recipe": str(self.path), "entry": self.entry,
                "dependencies": list(self.dependencies), "data": self.data,
                "params": self.params, "outputs": list(self.outputs), "notes": list(self.notes)}


def requirements(root: Path) -> tuple[list[str], list[str]]:
    """The project's declared dependencies (PEP 508 strings) and the files they came from."""
    found: list[str] = []
    sources: list[str] = []
    for path in sorted(root.glob("requirements*.txt")):
        if "dev" in path.name or "test" in path.name:
            continue
        lines = [ln.split(" #")[0].strip() for ln in path.read_text(errors="replace")
                 .splitlines()]
        found += [ln for ln in lines if ln and not ln.startswith(("#", "-"))]
        sources.append(path.name)
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        data = tomllib.loads(pyproject.read_text())
        deps = data.get("project", {}).get("dependencies", []) or _poetry(data)
        if deps:
            found += deps
            sources.append("pyproject.toml")
    setup_cfg = root / "setup.cfg"
    if setup_cfg.is_file():
        cfg = configparser.ConfigParser()
        cfg.read(setup_cfg)
        deps = cfg.get("options", "install_requires", fallback="").strip().splitlines()
        if deps:
            found += [d.strip() for d in deps if d.strip()]
            sources.append("setup.cfg")
    env_yml = root / "environment.yml"
    if env_yml.is_file():
        pip = _pip_of_environment_yml(env_yml.read_text())
        if pip:
            found += pip
            sources.append("environment.yml")
    unique: dict[str, str] = {}
    for dep in found:
        unique.setdefault(re.split(r"[\s<>=!~;\[(]", dep, maxsplit=1)[0].lower(), dep)
    return list(unique.values()), sources


def _poetry(data: dict[str, Any]) -> list[str]:
    """[tool.poetry.dependencies] as PEP 508 (`^1.26` → `>=1.26,<2`, `~1.2` → `~=1.2`)."""
    out = []
    for name, spec in data.get("tool", {}).get("poetry", {}).get("dependencies", {}).items():
        version = spec.get("version", "*") if isinstance(spec, dict) else str(spec)
        if name.lower() == "python":
            continue
        if version.startswith("^"):
            parts = version[1:].split(".")
            major = int(parts[0]) if parts[0].isdigit() else 0
            upper = f"{major + 1}" if major else f"0.{int(parts[1]) + 1}" if len(parts) > 1 \
                and parts[1].isdigit() else "1"
            out.append(f"{name}>={version[1:]},<{upper}")
        elif version.startswith("~") and not version.startswith("~="):
            out.append(f"{name}~={version[1:]}")
        elif version in ("*", ""):
            out.append(name)
        elif version[0].isdigit():
            out.append(f"{name}=={version}")
        else:
            out.append(f"{name}{version}")
    return out


def _pip_of_environment_yml(text: str) -> list[str]:
    """The `- pip:` list of a conda environment.yml (the conda packages are not PyPI's)."""
    out, indent = [], None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("- pip:"):
            indent = len(line) - len(line.lstrip())
            continue
        if indent is not None:
            if stripped.startswith("- ") and len(line) - len(line.lstrip()) > indent:
                out.append(stripped[2:].strip().strip("'\""))
            elif stripped:
                indent = None
    return out


def _imported(root: Path, code: pyscan.Scan) -> list[str]:
    """Distributions for what the code imports (no requirements file to go by)."""
    from builder.audit import IMPORT_NAMES, _local_modules  # noqa: PLC0415

    local = _local_modules(root, code)
    found = {IMPORT_NAMES.get(m, m).lower() for m in code.imports
             if m not in sys.stdlib_module_names and m not in local
             and not m.startswith("_") and m != "builder"}
    if code.called("torch.utils.tensorboard."):  # torch's writer needs tensorboard itself
        found.add("tensorboard")
    return sorted(found)


def _entry(code: pyscan.Scan) -> str:
    with_flags = {f.site.file for f in code.flags}
    candidates = [f for f in code.mains if f in with_flags] or code.mains
    if not candidates:
        raise InputError("no training script found: no file has `if __name__ == \"__main__\"`",
                         hint="write the recipe by hand (docs/recipe.md), or add a main "
                              "block to the training script")
    return sorted(candidates, key=lambda f: (not Path(f).name.startswith("train"),
                                             "/" in f, f))[0]


def _recipe_name(root: Path) -> str:
    """The folder's name as a recipe name ([a-z0-9][a-z0-9._-]*)."""
    name = _name(root.name).replace("_", "-")[:60].strip("-")
    return name if name and name[0].isalnum() else "model"


def _name(dest: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", dest.lower()).strip("_") or "value"


_SEED_DESTS = ("seed", "random_seed", "rng_seed", "manual_seed")
_FOLDER_WORDS = {"dir", "out", "output", "outdir", "workdir", "work", "save", "logdir"}


@dataclass
class _Plan:
    """What init found for the recipe's [train] and [data]."""

    command: list[str]
    seed: int = 0
    data: dict[str, str] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    outputs: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _launcher(root: Path, entry: str) -> tuple[list[str], str]:
    """How to start the entry point, and the folder its imports resolve from: a script as
    `python FILE`; a module of a package (relative imports) as `python -m` from the folder
    above the package, through runpy where that folder is not the project's (src layout)."""
    path = Path(entry)
    parts = list(path.with_suffix("").parts)
    top = 0
    while top < len(parts) - 1 and (root / Path(*parts[:top + 1]) / "__init__.py").is_file():
        top += 1
    first = next((i for i in range(len(parts) - 1)
                  if (root / Path(*parts[:i + 1]) / "__init__.py").is_file()), None)
    if first is None:
        return ["python", entry], "."
    module = ".".join(parts[first:])
    module = module.removesuffix(".__main__")
    base = str(Path(*parts[:first])) if first else "."
    if base == ".":
        return ["python", "-m", module], base
    return ["python", "-c", f"import runpy, sys; sys.path.insert(0, {base!r}); "
            f"runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"], base


def _plan(root: Path, code: pyscan.Scan, entry: str) -> _Plan:
    """The command, seed, data, params, outputs and notes from the entry point's flags and
    saves."""
    from builder.audit import data_files  # noqa: PLC0415

    command, _ = _launcher(root, entry)
    plan = _Plan(command)
    saved, folders = _save_targets(code, entry)
    seeded = False
    for f in (f for f in code.flags if f.site.file == entry):
        if f.action in ("store_true", "store_false", "help", "version", "count") \
                or not f.flag.startswith("-") or f.action == "append":
            continue
        default = f.default if f.literal else None
        if f.dest.lower() in _SEED_DESTS and not seeded:
            seeded = True
            plan.seed = default if isinstance(default, int) else 0
            plan.command += [f.flag, "{seed}"]
        elif f.dest in saved and isinstance(default, str):
            plan.outputs.append(os.path.normpath(default))
            plan.command += [f.flag, default]
        elif isinstance(default, str) and default and not Path(default).is_absolute() \
                and (root / default).exists() and f.dest not in folders:
            plan.data[_name(f.dest)] = os.path.normpath(default)
            plan.command += [f.flag, f"{{data.{_name(f.dest)}}}"]
        elif isinstance(default, str) and (f.dest in folders or _FOLDER_WORDS & set(
                f.dest.lower().split("_"))):
            plan.command += [f.flag, default]  # where the command writes
        else:
            _param(plan, f, default)
    for target in _literal_outputs(code, entry, saved, folders):
        if target not in plan.outputs:
            plan.outputs.append(target)
    declared = set(plan.data.values())
    for rel, _site in data_files(root, code, declared | set(plan.outputs)):
        key = _name(Path(rel).stem) or "data"
        while key in plan.data:
            key += "_"
        plan.data[key] = rel  # read by a path written in the code: declared where it lies
    plan.outputs.sort()
    return plan


def _param(plan: _Plan, f: pyscan.Flag, default: Any) -> None:
    """A flag with a value of its own: a [train] param (a required one gets a placeholder
    and a note; one whose default never ends, a finite value and a note)."""
    if default is None and f.required:
        plan.params[_name(f.dest)] = f.dest
        plan.command += [f.flag, f"{{params.{_name(f.dest)}}}"]
        plan.notes.append(f"{f.flag} is required and has no default: repro init passes "
                          f"{f.dest!r}; give the value you mean in [train] params")
    elif isinstance(default, int | float | str) and not isinstance(default, bool):
        if isinstance(default, int | float) and default < 0 and _ENDLESS.search(f.dest):
            plan.notes.append(f"{f.flag} defaults to {default}, which runs forever: repro "
                              "init set it to 1000; choose the value you mean")
            default = 1000
        plan.params[_name(f.dest)] = default
        plan.command += [f.flag, f"{{params.{_name(f.dest)}}}"]


_SAVES_AT = {"torch.save": 1, "joblib.dump": 1, "numpy.save": 0, "numpy.savez": 0,
             "numpy.savez_compressed": 0, "safetensors.torch.save_file": 1}


def _save_targets(code: pyscan.Scan, entry: str) -> tuple[set[str], set[str]]:
    """Flag dests the entry point saves to directly (`torch.save(m, args.out)`), and those
    it joins a file name to (`os.path.join(args.work_dir, "model.pt")`)."""
    direct, folders = set(), set()
    for c in code.called(*_SAVES_AT):
        at = _SAVES_AT[c.name]
        if c.site.file != entry or len(c.node.args) <= at:
            continue
        target = _resolved(c.node.args[at], code, entry)
        flag = code.flag_for(target)
        if flag is not None:
            direct.add(flag.dest)
        for node in ast.walk(target):
            flag = code.flag_for(node) if isinstance(node, ast.expr) else None
            if flag is not None and flag.dest not in direct:
                folders.add(flag.dest)
    return direct, folders


def _resolved(node: ast.expr, code: pyscan.Scan, entry: str) -> ast.expr:
    if isinstance(node, ast.Name):  # out_path = os.path.join(args.work_dir, "m.pt")
        return code.names.get((entry, node.id), node)
    return node


def _literal_outputs(code: pyscan.Scan, entry: str, saved: set[str],
                     folders: set[str]) -> list[str]:
    """Saved files named by literals, or by a folder flag's default joined to a literal."""
    defaults = {f.dest: f.default for f in code.flags if isinstance(f.default, str)}
    out = []
    for c in code.called(*_SAVES_AT):
        at = _SAVES_AT[c.name]
        if c.site.file != entry or len(c.node.args) <= at:
            continue
        path = _path_of(_resolved(c.node.args[at], code, entry), code, defaults)
        if path:
            out.append(path)
    return sorted(set(out))


def _path_of(node: ast.expr, code: pyscan.Scan, defaults: dict[str, Any]) -> str | None:
    value = pyscan.literal(node)
    if isinstance(value, str):
        return os.path.normpath(value)
    flag = code.flag_for(node)
    if flag is not None and isinstance(defaults.get(flag.dest), str):
        return os.path.normpath(str(defaults[flag.dest]))
    parts: list[str] = []
    if isinstance(node, ast.Call) and (pyscan.dotted(node.func, {}) or "").endswith(
            "path.join"):
        items: list[ast.expr] = list(node.args)
    elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
        items = [node.left, node.right]
    else:
        return None
    for item in items:
        part = _path_of(item, code, defaults)
        if part is None:
            return None
        parts.append(part)
    return os.path.normpath(os.path.join(*parts)) if parts else None


def _include(root: Path, code: pyscan.Scan, entry: str) -> list[str]:
    """[code] include: the entry point and the project's modules it imports, transitively
    (a package as `pkg/*`), so tests and experiments beside it are not code."""
    _, base = _launcher(root, entry)
    patterns, todo, seen = {entry}, [entry], set()
    parts = Path(entry).parts
    if base != "." or (len(parts) > 1 and (root / parts[0] / "__init__.py").is_file()):
        top = Path(base) / Path(entry).relative_to(base).parts[0] if base != "." \
            else Path(parts[0])
        if (root / top / "__init__.py").is_file():
            patterns.add(f"{top}/*")
            todo += [f for f in code.files if f.startswith(f"{top}/")]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for module, sites in code.imports.items():
            if not any(s.file == current for s in sites):
                continue
            for folder in {".", base, str(Path(current).parent)}:
                cand = Path(folder) / module
                if (root / cand).with_suffix(".py").is_file():
                    rel = os.path.normpath(cand.with_suffix(".py"))
                    patterns.add(rel)
                    todo.append(rel)
                elif (root / cand / "__init__.py").is_file():
                    rel = os.path.normpath(cand)
                    patterns.add(f"{rel}/*")
                    todo += [f for f in code.files if f.startswith(f"{rel}/")]
    folders = [p[:-1] for p in patterns if p.endswith("/*")]
    return sorted(p for p in patterns if p.endswith("/*") or not any(
        p.startswith(f) for f in folders))


def _pins(deps: list[str], accelerator: str, folders: tuple[str, ...]) -> tuple[
        list[str], bool, list[str]]:
    """The dependencies with torch's family pinned to the CPU build (the version given, else
    the one a --find-links folder holds); whether any needs the PyTorch index; notes."""
    out, torch, notes = [], False, []
    for dep in deps:
        name = re.split(r"[\s<>=!~;\[(]", dep, maxsplit=1)[0].lower()
        if name in TORCH_FAMILY and accelerator == "cpu":
            torch = True
            m = re.fullmatch(rf"{name}\s*==\s*([0-9][0-9.]*)(\+cpu)?", dep.strip(),
                             re.IGNORECASE)
            version = m.group(1) if m else _cpu_wheel(name, folders)
            if version and (m or dep.strip().lower() == name):
                out.append(f"{name}=={version}+cpu")
                continue
            notes.append(f"{dep!r} has no exact version: pin it as {name}==X.Y.Z+cpu (the "
                         "CPU index is its only source, so no CUDA build can come)")
        out.append(dep)
    return out, torch, notes


def _cpu_wheel(name: str, folders: tuple[str, ...]) -> str | None:
    """The newest +cpu version of `name` in the machine's wheel folders."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename  # noqa: PLC0415

    found = []
    for folder in (Path(f) for f in folders if "://" not in f):
        for wheel in folder.glob(f"{name}-*+cpu-*.whl") if folder.is_dir() else []:
            try:
                found.append(parse_wheel_filename(wheel.name)[1])
            except InvalidWheelFilename:
                continue
    return str(max(found)).removesuffix("+cpu") if found else None


def _dependencies(root: Path, code: pyscan.Scan, find_links: tuple[str, ...]) -> tuple[
        list[str], bool, list[str], list[str]]:
    """The recipe's dependencies, whether torch's index is needed, where they came from, and
    what a person should decide about them."""
    notes: list[str] = []
    deps, sources = requirements(root)
    if not deps:
        deps = _imported(root, code)
        notes.append("no requirements file or pyproject dependencies: [environment] "
                     "dependencies lists what the code imports; add what it needs besides")
    deps, torch, pinned = _pins(deps, "cpu", find_links)
    return deps, torch, sources, notes + pinned


def init(root: Path, *, force: bool = False, today: dt.date | None = None,
         find_links: tuple[str, ...] = ()) -> Written:
    """Write root/repro.toml from what the project holds.

    Raises:
        InputError: a recipe is there already (without `force`); no entry point.
    """
    import tomlkit  # noqa: PLC0415

    from builder.audit import python_files  # noqa: PLC0415

    root = root.resolve()
    path = root / "repro.toml"
    if path.exists() and not force:
        raise InputError(f"{path} exists: repro init changes nothing in a project that has a "
                         "recipe", hint="`repro audit` checks it; --force writes a new one")
    files = python_files(root)
    code = pyscan.scan(root, files)
    entry = _entry(code)
    plan = _plan(root, code, entry)
    deps, torch, sources, found = _dependencies(root, code, find_links)
    notes = plan.notes + found
    accelerator = "cpu"
    if not plan.outputs:
        notes.append("no saved model found in the code: list what training writes in "
                     "[train] outputs")
    name = _recipe_name(root)
    when = (today or dt.datetime.now(dt.UTC).date()).isoformat()

    doc = tomlkit.document()
    doc.add(tomlkit.comment(f"Written by `repro init` from {', '.join(sources) or 'the code'} "
                            f"and {entry}; every key is documented in repro's docs/recipe.md."))
    doc.add(tomlkit.comment("Check the lines marked DECIDE, then: repro lock && repro run"))
    doc.add(tomlkit.nl())
    recipe = tomlkit.table()
    recipe.add("name", name)
    recipe.add("schema", 1)
    doc.add("recipe", recipe)
    doc.add("environment", _environment(deps, torch, accelerator, when))
    code_table = tomlkit.table()
    code_table.add("include", _array(_include(root, code, entry)))
    code_table["include"].comment("the entry point and what it imports (`*` matches `/` too)")
    doc.add("code", code_table)
    if plan.data:
        data_table = tomlkit.table()
        for key, rel in plan.data.items():
            data_table.add(key, tomlkit.inline_table())
            data_table[key]["path"] = rel
        doc.add("data", data_table)
    doc.add("train", _train(plan.command, plan.seed, plan.params, plan.outputs, torch))
    repro_table = tomlkit.table()
    repro_table.add("standard", "bitwise")
    repro_table["standard"].comment("DECIDE: bitwise, statistical or functional")
    doc.add("reproducibility", repro_table)
    for note in notes:
        doc.add(tomlkit.comment(f"DECIDE: {note}"))
    _write(path, tomlkit.dumps(doc), force)
    return Written(path, entry, tuple(deps), plan.data, plan.params, tuple(plan.outputs),
                   tuple(notes))


def _write(path: Path, text: str, force: bool) -> None:
    """Into place in one step: a new recipe by a link that fails where one appeared
    meanwhile (two inits at once: one wins, the other is refused); --force by rename."""
    import tempfile  # noqa: PLC0415

    fd, name = tempfile.mkstemp(dir=path.parent, prefix=".repro.toml.")
    tmp = Path(name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        tmp.chmod(0o644)
        if force:
            os.replace(tmp, path)
            return
        try:
            os.link(tmp, path)
        except FileExistsError as exc:
            raise InputError(f"{path} exists: repro init changes nothing in a project that "
                             "has a recipe", hint="`repro audit` checks it; --force writes a "
                                                  "new one") from exc
    finally:
        tmp.unlink(missing_ok=True)


def _environment(deps: list[str], torch: bool, accelerator: str, when: str) -> Any:
    import tomlkit  # noqa: PLC0415

    env = tomlkit.table()
    env.add("python", f"{sys.version_info.major}.{sys.version_info.minor}")
    env.add("platform", "linux/x86_64")
    env["platform"].comment("the target the lock resolves for")
    env.add("dependencies", _array(deps))
    env.add("exclude-newer", when)
    env["exclude-newer"].comment("resolve as of this date, so a re-lock gives the same lock")
    if torch:
        env.add("accelerator", accelerator)
        env["accelerator"].comment('DECIDE: "cpu", or "cuda-12.4" for the CUDA build')
        source = tomlkit.table()
        source.add("url", TORCH_CPU)
        source.add("packages", _array([d for d in TORCH_FAMILY if any(
            re.split(r"[\s<>=!~;\[(]", x, maxsplit=1)[0].lower() == d for x in deps)]))
        sources_array = tomlkit.aot()
        sources_array.append(source)
        env.add("sources", sources_array)
    return env


def _train(command: list[str], seed: int, params: dict[str, Any], outputs: list[str],
           torch: bool) -> Any:
    import tomlkit  # noqa: PLC0415

    train = tomlkit.table()
    train.add("command", _array(command))
    train.add("seed", seed)
    if params:
        inline = tomlkit.inline_table()
        inline.update(params)
        train.add("params", inline)
    train.add("outputs", _array(outputs))
    if not outputs:
        train["outputs"].comment("DECIDE: the files training writes, e.g. model.pt")
    if torch:
        train.add("threads", 1)
        train["threads"].comment("one thread: the same reduction order on every CPU")
    return train


def _array(items: list[Any]) -> Any:
    import tomlkit  # noqa: PLC0415

    array = tomlkit.array()
    array.extend(items)
    if sum(len(str(i)) + 4 for i in items) > 70:
        array.multiline(True)
    return array
