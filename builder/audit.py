"""`repro audit`: what would stop a project's model from being re-made, each with its file,
line and fix. The code is read with `ast` (builder/pyscan.py), never run.

    recipe and lock     no recipe, an unreadable one; no lock, a stale or tampered one;
                        unpinned requirements; imports that no locked package provides
    randomness          random, numpy (legacy global functions, default_rng() unseeded),
                        torch (no manual_seed; DataLoader workers unseeded), tf.random, JAX
                        keys from the clock, cudnn.benchmark, non-deterministic CUDA ops
    data                files the code names that the recipe does not declare; data
                        downloaded at run time
    params              hyperparameters hard-coded in the code
    outputs             by-products that differ per run (tensorboard events) among outputs
    the record          outside git; CUDA wheels under a bitwise claim; no baseline; no
                        verification within --stale-after days
"""

from __future__ import annotations

import ast
import datetime as dt
import os
import re
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from builder import proc, pyscan
from builder.errors import ReproError
from builder.recipe import Recipe, canonical_name

SEVERITIES = ("low", "medium", "high")
_SKIP_DIRS = {".git", ".venv", "venv", "env", "__pycache__", "node_modules", "site-packages",
              "build", "dist", ".tox", ".mypy_cache", ".pytest_cache", "lockfiles"}
# import names whose distribution has another name (the common ones in ML code)
IMPORT_NAMES = {"sklearn": "scikit-learn", "PIL": "pillow", "cv2": "opencv-python",
                "yaml": "pyyaml", "skimage": "scikit-image", "bs4": "beautifulsoup4",
                "google.protobuf": "protobuf", "attr": "attrs", "dateutil": "python-dateutil",
                "jwt": "pyjwt", "serial": "pyserial", "Crypto": "pycryptodome",
                "tensorflow": "tensorflow", "lightning": "lightning", "wandb": "wandb",
                "sentencepiece": "sentencepiece", "OpenSSL": "pyopenssl"}
# distributions that bring other top-level modules (a package's import is provided)
PROVIDES = {"tensorboard": ("tensorboard",), "torch": ("torch", "torchgen", "functorch"),
            "pyyaml": ("yaml",), "scikit-learn": ("sklearn",), "pillow": ("PIL",),
            "protobuf": ("google",),
            "setuptools": ("setuptools", "pkg_resources", "_distutils_hack")}
_LEGACY_NP = {"rand", "randn", "randint", "random", "random_sample", "choice", "shuffle",
              "permutation", "normal", "uniform", "binomial", "poisson", "beta", "gamma",
              "exponential", "standard_normal", "multivariate_normal", "random_integers"}
_RANDOM_FNS = {"random", "randint", "choice", "choices", "shuffle", "sample", "uniform",
               "gauss", "normalvariate", "randrange", "betavariate", "triangular"}
_DATA_SUFFIX = re.compile(r"\.(csv|tsv|txt|json|jsonl|parquet|npy|npz|pt|pth|pkl|pickle|h5|"
                          r"hdf5|arrow|feather|tfrecord|zip|tar|gz|bin|ckpt|safetensors)$")
_HYPER = re.compile(r"^(lr|learning_rate|batch_size|epochs|num_epochs|n_epochs|steps|"
                    r"max_steps|num_steps|hidden|hidden_size|hidden_dim|weight_decay|momentum|"
                    r"dropout|warmup_steps|n_layer|n_head|n_embd)$", re.IGNORECASE)
_DOWNLOADS = ("urllib.request.urlretrieve", "urllib.request.urlopen", "requests.get",
              "wget.download", "gdown.download", "torch.hub.load",
              "torch.hub.download_url_to_file", "datasets.load_dataset",
              "huggingface_hub.hf_hub_download", "huggingface_hub.snapshot_download",
              "tensorflow_datasets.load", "keras.utils.get_file",
              "tensorflow.keras.utils.get_file")


@dataclass(frozen=True)
class Finding:
    severity: str  # low | medium | high
    code: str  # a stable name, for scripts: unseeded-numpy, undeclared-data, …
    file: str  # project-relative ("" for the project as a whole)
    line: int  # 0 when no line applies
    message: str
    fix: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def python_files(root: Path) -> list[str]:
    """The project's .py files: what git tracks or would (ignoring what it ignores), else a
    walk that skips virtualenvs, caches and build folders."""
    done = proc.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others",
                     "--exclude-standard", "--", "*.py"], check=False)
    if done.returncode == 0:
        return sorted({f for f in done.stdout.split("\0") if f.endswith(".py")
                       and not set(Path(f).parts) & _SKIP_DIRS and (root / f).is_file()})
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not
                             (Path(dirpath) / d / "pyvenv.cfg").exists())
        found += [os.path.relpath(os.path.join(dirpath, f), root)
                  for f in filenames if f.endswith(".py")]
    return sorted(found)


def audit(root: Path, *, stale_after: float = 30) -> list[Finding]:
    """Every finding for the project at `root`, most severe first."""
    from builder import schema  # noqa: PLC0415
    from builder.inputs import selects  # noqa: PLC0415

    root = root.resolve()
    findings: list[Finding] = []
    recipe = None
    recipe_path = root / "repro.toml"
    if not recipe_path.is_file():
        findings.append(Finding("high", "no-recipe", "repro.toml", 0,
                                "no repro.toml: nothing declares the code, data, seed, "
                                "params and environment the model is made from",
                                "`repro init` writes one from what it finds here"))
    else:
        try:
            recipe = schema.load_recipe(recipe_path)
        except ReproError as exc:
            findings.append(Finding("high", "bad-recipe", "repro.toml", 0, exc.message,
                                    exc.hint or "fix the recipe"))
    files = python_files(root)  # the recipe's code where it has one, else every .py file
    code = pyscan.scan(root, [f for f in files if recipe is None or selects(recipe, f)])
    findings += [Finding("medium", "unparsable-code", rel, line, f"{rel} does not parse: {why}",
                         "fix the syntax: nothing in it could be checked")
                 for rel, why, line in code.errors]
    findings += _git(root)
    findings += _requirements(root, recipe)
    if recipe is not None:
        findings += _lock(recipe, code)
        findings += _record(recipe, stale_after)
    standard = recipe.reproducibility.standard if recipe else "bitwise"
    findings += _randomness(code, standard)
    findings += _data(root, code, recipe)
    findings += _params(code)
    findings += _outputs(code, recipe)
    rank = {s: i for i, s in enumerate(reversed(SEVERITIES))}
    return sorted(findings, key=lambda f: (rank[f.severity], f.file, f.line, f.code))


def failing(findings: list[Finding], fail_on: str) -> list[Finding]:
    """The findings at or above `fail_on`."""
    floor = SEVERITIES.index(fail_on)
    return [f for f in findings if SEVERITIES.index(f.severity) >= floor]


# -- recipe, lock, record --------------------------------------------------------------------
def _git(root: Path) -> list[Finding]:
    inside = proc.run(["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"],
                      check=False)
    if inside.returncode != 0:
        return [Finding("high", "not-in-git", "", 0,
                        "the project is not in git: the code digest is then the files on "
                        "disk, no commit names the code, and runbooks and reproduce cannot "
                        "fetch it", "git init && git add -A && git commit -m 'the project'")]
    dirty = proc.run(["git", "-C", str(root), "status", "--porcelain", "--", "."],
                     check=False).stdout.strip()
    if dirty:
        return [Finding("low", "uncommitted", "", 0, f"uncommitted changes "
                        f"({len(dirty.splitlines())} paths): a run made now is recorded dirty",
                        "commit before a run you mean to keep")]
    return []


def _requirements(root: Path, recipe: Recipe | None) -> list[Finding]:
    """Loose pins in requirements files matter only where no lock fixes the versions."""
    if recipe is not None:
        return []
    out = []
    for path in sorted(root.glob("requirements*.txt")):
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            text = line.split("#")[0].strip()
            if text and not text.startswith("-") and "==" not in text and "@" not in text:
                out.append(Finding("medium", "unpinned", path.name, n,
                                   f"{text!r} is not pinned: each install may get another "
                                   "version", "pin it, or lock it: `repro init` then "
                                   "`repro lock`"))
    return out


def _lock(recipe: Recipe, code: pyscan.Scan) -> list[Finding]:
    from builder import lock  # noqa: PLC0415

    rel = str(recipe.lock_dir.relative_to(recipe.root))
    current, stale, tampered = lock.inspect(recipe)
    if current is None:
        return [Finding("high", "no-lock", rel, 0, f"no lock: {stale[0] if stale else ''}",
                        "`repro lock`, then commit lockfiles/")]
    out = []
    if tampered:
        out.append(Finding("high", "tampered-lock", rel, 0, "the lock was edited by hand: "
                           + "; ".join(tampered), "restore it from git, or `repro lock`"))
    if stale:
        out.append(Finding("high", "stale-lock", rel, 0, "the lock no longer matches the "
                           "recipe: " + "; ".join(stale), "`repro lock`"))
    cuda = sorted(p.name for p in current.packages if p.name.startswith("nvidia-")
                  or (p.name == "torch" and "+cpu" not in p.version
                      and recipe.environment.platform.startswith("linux")))
    if cuda and recipe.reproducibility.standard == "bitwise":
        out.append(Finding("medium", "hardware-bound", rel, 0,
                           f"the lock holds CUDA builds ({', '.join(cuda[:3])}…) and the recipe "
                           "claims bitwise: equal bits hold only on the same GPU model",
                           "declare [environment] accelerator and keep one baseline per "
                           "hardware class (repro does), or use the CPU build (+cpu) for CPU "
                           "runs"))
    provided = {"builder"}  # repro puts builder.runtime on every run's path
    for pkg in current.packages:
        name = canonical_name(pkg.name)
        provided |= {name.replace("-", "_"), *PROVIDES.get(name, ())}
    provided |= {m.lower() for m, dist in IMPORT_NAMES.items()
                 if canonical_name(dist) in {canonical_name(p.name) for p in current.packages}}
    local = _local_modules(recipe.root, code)
    for module, sites in sorted(code.imports.items()):
        if module in sys.stdlib_module_names or module in local or module.startswith("_"):
            continue
        if module.lower().replace("-", "_") not in {p.lower() for p in provided}:
            dist = IMPORT_NAMES.get(module, module)
            out.append(Finding("high", "unlocked-import", sites[0].file, sites[0].line,
                               f"import {module}: no locked package provides it",
                               f"add {dist!r} to [environment] dependencies, then "
                               "`repro lock`"))
    return out


def _local_modules(root: Path, code: pyscan.Scan) -> set[str]:
    """Top-level names the project's own files and folders provide."""
    names = {Path(f).parts[0].removesuffix(".py") for f in code.files}
    names |= {Path(f).stem for f in code.files}  # scripts that import their neighbours
    return names | {p.name for p in root.iterdir() if p.is_dir()}


def _record(recipe: Recipe, stale_after: float) -> list[Finding]:
    from builder.store import Store  # noqa: PLC0415

    rel = str(recipe.lock_dir.relative_to(recipe.root))
    out = []
    if not (recipe.lock_dir / "baseline.json").is_file():
        out.append(Finding("medium", "no-baseline", rel, 0, "no baseline: nothing says what "
                           "a re-made model must match", "`repro run`, then `repro baseline "
                           "set` and commit lockfiles/"))
        return out
    try:
        done = Store.open().verifications.of(recipe.name)
    except ReproError:
        done = []
    last = max((v.started for v in done), default="")
    cutoff = (dt.datetime.now(dt.UTC) - dt.timedelta(days=stale_after)).isoformat()
    if last < cutoff:
        out.append(Finding("low", "not-verified", rel, 0,
                           f"no verification in the last {stale_after:g} day(s)"
                           + (f" (last: {last[:10]})" if last else " (none in this store)"),
                           "`repro verify`"))
    return out


# -- randomness ---------------------------------------------------------------------------
def _unseeded(code: pyscan.Scan, uses: list[pyscan.Call], *seeders: str) -> list[pyscan.Call]:
    """The first use in each file that nothing seeds: a seed counts in the same file, or in
    an entry point (which runs before what it imports); one in a test helper does not."""
    seeded = {c.site.file for c in code.called(*seeders, "builder.runtime.seed_everything")}
    if seeded & set(code.mains):
        return []
    first: dict[str, pyscan.Call] = {}
    for c in sorted(uses, key=lambda c: c.site):
        if c.site.file not in seeded:
            first.setdefault(c.site.file, c)
    return list(first.values())


def _randomness(code: pyscan.Scan, standard: str) -> list[Finding]:
    out: list[Finding] = []
    uses = [c for c in code.called("random.") if c.name.split(".")[-1] in _RANDOM_FNS]
    for c in _unseeded(code, uses, "random.seed"):
        out.append(Finding("high", "unseeded-random", c.site.file, c.site.line,
                           f"{c.name}() and no random.seed() before it",
                           "call random.seed(seed) at start, the seed from a --seed flag"))
    legacy = [c for c in code.called("numpy.random.") if c.name.split(".")[-1] in _LEGACY_NP]
    for c in _unseeded(code, legacy, "numpy.random.seed"):
        out.append(Finding("high", "unseeded-numpy", c.site.file, c.site.line,
                           f"{c.name}() uses numpy's global generator, never seeded",
                           "rng = np.random.default_rng(seed), and draw from rng"))
    for c in code.called("numpy.random.default_rng", "numpy.random.RandomState",
                         "numpy.random.Generator"):
        if not c.node.args and not c.node.keywords:
            out.append(Finding("high", "unseeded-numpy", c.site.file, c.site.line,
                               f"{c.name}() without a seed draws from "
                               "the OS: another stream each run",
                               f"{c.name.split('.')[-1]}(seed), the seed from a --seed flag"))
    if "torch" in code.imports:
        out += _torch(code, standard)
    out += _sklearn(code)
    for name, value, site in code.assigns:
        if name.endswith("cudnn.benchmark") and getattr(value, "value", None) is True:
            out.append(Finding("high" if standard == "bitwise" else "medium", "cudnn-benchmark",
                               site.file, site.line, "cudnn.benchmark = True picks kernels by "
                               "timing: another choice, other bits, on each run",
                               "set it False (and cudnn.deterministic = True)"))
    tf = code.called("tensorflow.random.", "tensorflow.keras.", "keras.")
    for c in _unseeded(code, tf, "tensorflow.random.set_seed",
                       "tensorflow.keras.utils.set_random_seed", "keras.utils.set_random_seed"):
        out.append(Finding("high", "unseeded-tensorflow", c.site.file, c.site.line,
                           "TensorFlow draws random numbers and tf.random.set_seed is never "
                           "called", "tf.keras.utils.set_random_seed(seed) at start"))
    for c in code.called("jax.random.PRNGKey", "jax.random.key"):
        if any(isinstance(n, ast.Call) and (pyscan.dotted(n.func, {}) or "").startswith(
                ("time.", "datetime.")) for n in ast.walk(c.node)):
            out.append(Finding("high", "jax-key-from-time", c.site.file, c.site.line,
                               "a JAX key made from the clock: another stream each run",
                               "jax.random.PRNGKey(seed), the seed from a --seed flag"))
    return out


def _first(calls: list[pyscan.Call]) -> pyscan.Site:
    return min(c.site for c in calls) if calls else pyscan.Site("", 0)


def _torch(code: pyscan.Scan, standard: str) -> list[Finding]:
    out: list[Finding] = []
    drawn = code.called("torch.nn.", "torch.rand", "torch.randn", "torch.randint",
                        "torch.randperm", "torch.normal", "torch.utils.data.DataLoader",
                        "torch.utils.data.random_split", "torch.utils.data.RandomSampler")
    for c in _unseeded(code, drawn, "torch.manual_seed", "torch.random.manual_seed",
                       "lightning.seed_everything", "pytorch_lightning.seed_everything",
                       "transformers.set_seed"):
        s = c.site
        out.append(Finding("high", "unseeded-torch", s.file, s.line,
                           "torch draws random numbers (weights, shuffling) and "
                           "torch.manual_seed is never called",
                           "torch.manual_seed(seed) before the model is made"))
    for c in code.called("torch.utils.data.DataLoader"):
        workers = c.keyword("num_workers")
        zero = isinstance(workers, ast.Constant) and workers.value == 0
        if workers is not None and not zero and c.keyword("worker_init_fn") is None \
                and c.keyword("generator") is None:
            out.append(Finding("medium", "unseeded-workers", c.site.file, c.site.line,
                               "DataLoader with worker processes and neither "
                               "worker_init_fn nor generator: random augmentations in "
                               "workers are not reproducible",
                               "pass generator=torch.Generator().manual_seed(seed) and "
                               "worker_init_fn (builder.runtime has both)"))
    cuda = any("cuda" in text for text, _ in code.strings)
    if standard == "bitwise" and cuda and not code.called(
            "torch.use_deterministic_algorithms"):
        s = _first(code.called("torch."))
        out.append(Finding("medium", "nondeterministic-ops", s.file, s.line,
                           "the recipe claims bitwise and the code can use CUDA, but "
                           "torch.use_deterministic_algorithms(True) is never called",
                           "call it (and set CUBLAS_WORKSPACE_CONFIG=:4096:8 in [train] "
                           "env), or builder.runtime.seed_everything()"))
    return out


_SKLEARN_RANDOM = ("RandomForestClassifier", "RandomForestRegressor", "ExtraTreesClassifier",
                   "ExtraTreesRegressor", "GradientBoostingClassifier",
                   "GradientBoostingRegressor", "HistGradientBoostingClassifier",
                   "HistGradientBoostingRegressor", "MLPClassifier", "MLPRegressor",
                   "SGDClassifier", "SGDRegressor", "KMeans", "MiniBatchKMeans",
                   "train_test_split", "ShuffleSplit", "StratifiedShuffleSplit",
                   "DecisionTreeClassifier", "DecisionTreeRegressor", "BaggingClassifier",
                   "IsolationForest", "TSNE")


def _sklearn(code: pyscan.Scan) -> list[Finding]:
    """scikit-learn estimators and splitters that draw numbers take random_state."""
    out = []
    loose = [c for c in code.called("sklearn.") if c.name.split(".")[-1] in _SKLEARN_RANDOM
             and c.keyword("random_state") is None]
    for c in _unseeded(code, loose, "numpy.random.seed"):
        name = c.name.split(".")[-1]
        out.append(Finding("high", "unseeded-sklearn", c.site.file, c.site.line,
                           f"{name}() without random_state draws from numpy's global "
                           "generator: another result each run unless that is seeded",
                           f"pass random_state=seed to {name}()"))
    return out


# -- data, params, outputs ----------------------------------------------------------------
def _declared(recipe: Recipe | None) -> set[str]:
    if recipe is None:
        return set()
    paths = {os.path.normpath(d.path) for d in recipe.data}
    if recipe.train:
        paths |= {os.path.normpath(o) for o in recipe.train.outputs}
        if recipe.train.metrics:
            paths.add(os.path.normpath(recipe.train.metrics))
    return paths


def _data_folder(path: Path) -> bool:
    """A folder of data: data files in it, and no code (a package or a docs folder is not)."""
    if not path.is_dir() or path.name in _SKIP_DIRS or path.name.startswith("."):
        return False
    names = [p.name for p in path.iterdir()]
    return any(_DATA_SUFFIX.search(n) for n in names) and not any(
        n.endswith((".py", ".md", ".rst", ".toml", ".nix")) for n in names)


def data_files(root: Path, code: pyscan.Scan,
               declared: set[str]) -> list[tuple[str, pyscan.Site]]:
    """Files (and data folders) here that string literals or flag defaults name and that are
    neither code nor `declared`: where each is first named."""
    code_files = set(code.files)
    seen: set[str] = set()
    out = []
    named = [(v, s) for v, s in code.strings] + [
        (f.default, f.site) for f in code.flags if isinstance(f.default, str)]
    for value, site in sorted(named, key=lambda x: (x[1].file, x[1].line)):
        if "\n" in value or value.startswith(("http:", "https:", "-")):
            continue
        rel = os.path.normpath(value)
        if rel in seen or rel.startswith("..") or os.path.isabs(rel) or rel in (".", ""):
            continue
        path = root / rel
        if not (path.is_file() and _DATA_SUFFIX.search(rel)) and not _data_folder(path):
            continue
        if rel in code_files or rel in {"repro.toml", "requirements.txt", "pyproject.toml"} \
                or any(rel == d or rel.startswith(d + os.sep) or d.startswith(rel + os.sep)
                       for d in declared):
            continue
        seen.add(rel)
        out.append((rel, site))
    return out


def _data(root: Path, code: pyscan.Scan, recipe: Recipe | None) -> list[Finding]:
    out = []
    for rel, site in data_files(root, code, _declared(recipe)):
        out.append(Finding("high" if recipe is not None else "medium", "undeclared-data",
                           site.file, site.line, f"reads {rel}, which the recipe does not "
                           "declare: the run key does not cover it (and the sandbox hides it)",
                           f'declare it: [data] {Path(rel).stem.replace("-", "_")} = '
                           f'{{ path = "{rel}" }}, and pass {{data.NAME}} in the command'))
    readers = [c for c in code.called("pandas.read_", "numpy.loadtxt", "numpy.genfromtxt",
                                      "numpy.load", "polars.read_", "torch.load")
               if any(isinstance(a, ast.Constant) and str(a.value).startswith(
                   ("http://", "https://", "s3://", "gs://")) for a in c.node.args)]
    for c in [*code.called(*_DOWNLOADS, "torchvision.datasets."), *readers]:
        if c.name.startswith("torchvision.datasets.") and getattr(
                c.keyword("download"), "value", None) is not True:
            continue
        out.append(Finding("high", "runtime-download", c.site.file, c.site.line,
                           f"{c.name}() fetches data while training: what it gets can "
                           "change, and the run key does not cover it",
                           "download it once and declare it in [data] (a path, or a url "
                           "with its digest: repro fetches and checks it)"))
    return out


def _params(code: pyscan.Scan) -> list[Finding]:
    out = []
    for name, value, site in code.numbers:
        if _HYPER.match(name):
            out.append(Finding("low", "hard-coded-param", site.file, site.line,
                               f"{name} = {value} is fixed in the code: another value means "
                               "another code digest, not a param",
                               f"make it a flag (--{name.lower().replace('_', '-')}) and a [train] "
                               "param"))
    for c in code.called("torch.optim.", "optax.", "tensorflow.keras.optimizers."):
        lr = c.keyword("lr") or c.keyword("learning_rate")
        if isinstance(lr, ast.Constant):
            out.append(Finding("low", "hard-coded-param", c.site.file, c.site.line,
                               f"the learning rate {lr.value!r} is written into the optimiser "
                               "call", "take it from a flag and a [train] param"))
    return out


def _outputs(code: pyscan.Scan, recipe: Recipe | None) -> list[Finding]:
    if recipe is None or recipe.train is None:
        return []
    out = []
    logdirs = []
    for c in code.called("torch.utils.tensorboard.SummaryWriter", "tensorboardX.SummaryWriter",
                         "tensorflow.summary.create_file_writer"):
        arg = c.keyword("log_dir") or c.keyword("logdir") or (c.node.args[0] if c.node.args
                                                               else None)
        value = pyscan.literal(arg) if arg is not None else "runs"
        flag = code.flag_for(arg) if arg is not None else None
        if flag is not None and isinstance(flag.default, str):
            value = flag.default
        if isinstance(value, str):
            logdirs.append((os.path.normpath(value), c.site))
    for output in recipe.train.outputs:
        rel = os.path.normpath(output)
        if "tfevents" in rel:
            out.append(Finding("high", "varying-output", "repro.toml", 0,
                               f"train.outputs names {output}: event files hold the time and "
                               "host, so each run's differ", "leave event files out of "
                               "train.outputs"))
        for logdir, site in logdirs:
            if logdir == rel or logdir.startswith(rel + os.sep):
                out.append(Finding("high", "varying-output", site.file, site.line,
                                   f"a tensorboard writer logs into {logdir}, inside the "
                                   f"declared output {output}: its event files hold the "
                                   "time and host, so the output differs each run",
                                   f"declare the model file itself (e.g. {rel}/model.pt) "
                                   "instead of the folder"))
        if re.search(r"\{(time|date|now|timestamp)\}|%[YmdHMS]", output):
            out.append(Finding("medium", "varying-output", "repro.toml", 0,
                               f"train.outputs names {output}, a name with the time in it",
                               "give outputs fixed names"))
    return out
