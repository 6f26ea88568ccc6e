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
from dataclasses import dataclass
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
        deps = tomllib.loads(pyproject.read_text()).get("project", {}).get("dependencies", [])
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


def _flags(root: Path, code: pyscan.Scan, entry: str) -> tuple[
        list[str], int, dict[str, str], dict[str, Any], list[str], dict[str, str]]:
    """The command, seed, data, params, notes, and folder flags (dest → default)."""
    command = ["python", entry]
    seed, data, params, notes, folders = 0, {}, {}, [], {}
    for f in (f for f in code.flags if f.site.file == entry):
        if f.action in ("store_true", "store_false", "help", "version", "count") \
                or not f.flag.startswith("-"):
            continue
        if "seed" in f.dest.lower():
            seed = f.default if isinstance(f.default, int) else 0
            command += [f.flag, "{seed}"]
            continue
        if not f.literal or f.default is None:
            continue
        default = f.default
        if isinstance(default, str) and default and (root / default).exists() \
                and not Path(default).is_absolute():
            data[_name(f.dest)] = default
            command += [f.flag, f"{{data.{_name(f.dest)}}}"]
            continue
        if isinstance(default, str) and re.search(r"(dir|out|output|work)", f.dest):
            folders[f.dest] = default  # where the command writes: outputs below it
            command += [f.flag, default]
            continue
        if isinstance(default, bool) or not isinstance(default, int | float | str):
            continue
        if isinstance(default, int | float) and default < 0 and _ENDLESS.search(f.dest):
            notes.append(f"{f.flag} defaults to {default}, which runs forever: repro init "
                         "set it to 1000; choose the value you mean")
            default = 1000
        params[_name(f.dest)] = default
        command += [f.flag, f"{{params.{_name(f.dest)}}}"]
    return command, seed, data, params, notes, folders


def _recipe_name(root: Path) -> str:
    """The folder's name as a recipe name ([a-z0-9][a-z0-9._-]*)."""
    name = _name(root.name).replace("_", "-")[:60].strip("-")
    return name if name and name[0].isalnum() else "model"


def _name(dest: str) -> str:
    return re.sub(r"[^a-z0-9_]", "_", dest.lower()).strip("_") or "value"


def _outputs(code: pyscan.Scan, entry: str, folders: dict[str, str]) -> list[str]:
    """The files the entry point saves, where a literal (or a folder flag's default) names
    them."""
    out = []
    for c in code.called(*_SAVES):
        if c.site.file != entry or len(c.node.args) < (2 if c.name in (
                "torch.save", "joblib.dump", "pickle.dump") else 1):
            continue
        target = c.node.args[1] if c.name in ("torch.save", "joblib.dump") else c.node.args[0]
        if isinstance(target, ast.Name):  # out_path = os.path.join(args.work_dir, "m.pt")
            target = code.names.get((entry, target.id), target)
        path = _path_of(target, code, folders)
        if path:
            out.append(path)
    return sorted(set(out))


def _path_of(node: ast.expr, code: pyscan.Scan, folders: dict[str, str]) -> str | None:
    value = pyscan.literal(node)
    if isinstance(value, str):
        return os.path.normpath(value)
    if isinstance(node, ast.Call) and (pyscan.dotted(node.func, {}) or "").endswith(
            "path.join"):
        parts = []
        for arg in node.args:
            flag = code.flag_for(arg)
            lit = pyscan.literal(arg)
            if flag is not None and flag.dest in folders:
                parts.append(folders[flag.dest])
            elif isinstance(lit, str):
                parts.append(lit)
            else:
                return None
        return os.path.normpath(os.path.join(*parts)) if parts else None
    return None


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
    command, seed, data, params, notes, folders = _flags(root, code, entry)
    deps, torch, sources, found = _dependencies(root, code, find_links)
    notes += found
    accelerator = "cpu"
    outputs = _outputs(code, entry, folders)
    if not outputs:
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
    code_table.add("include", _array(["*.py"]))
    code_table["include"].comment("every .py file git tracks (a `*` matches `/` too)")
    doc.add("code", code_table)
    if data:
        data_table = tomlkit.table()
        for key, rel in data.items():
            data_table.add(key, tomlkit.inline_table())
            data_table[key]["path"] = rel
        doc.add("data", data_table)
    doc.add("train", _train(command, seed, params, outputs, torch))
    repro_table = tomlkit.table()
    repro_table.add("standard", "bitwise")
    repro_table["standard"].comment("DECIDE: bitwise, statistical or functional")
    doc.add("reproducibility", repro_table)
    for note in notes:
        doc.add(tomlkit.comment(f"DECIDE: {note}"))
    text = tomlkit.dumps(doc)
    tmp = path.with_name(".repro.toml.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
    return Written(path, entry, tuple(deps), data, params, tuple(outputs), tuple(notes))


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
        env["accelerator"].comment("DECIDE: cpu, or cuda12.x for the CUDA build")
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
