"""`repro export dockerfile`: the image as a Dockerfile, for teams that build with Docker.

Base by digest, every package pinned with its sha256 (`--require-hashes`, wheels only), the
same layout as `repro build --image` (site at /opt/repro/site-packages, code at the workdir).
Docker's builder stamps times and orders files its own way, so its image digest differs
from repro's; the packages are the same files.
"""

from __future__ import annotations

import json
from pathlib import Path

from builder import lock, pylock
from builder.errors import InputError
from builder.image.build import SITE
from builder.project import Project
from builder.store import atomic_write


def export(project: Project, output: Path | None = None) -> tuple[Path, Path]:
    """Write the Dockerfile and the hash-pinned requirements it installs.

    Returns (Dockerfile, requirements file), both inside the project (the build context).

    Raises:
        InputError: the base is `scratch` (nothing to run pip with), or the lock is stale.
    """
    recipe = project.recipe
    if recipe.image.base == "scratch":
        raise InputError(f"{recipe.path}: a Dockerfile needs a base with Python to install "
                         "packages; image.base is scratch",
                         hint='set image.base = "REGISTRY/python@sha256:…" and re-lock')
    current = project.lock  # the CLI opens the project `locked`: a stale lock is refused
    lock_rel = recipe.lock_dir.relative_to(recipe.root)
    requirements = recipe.lock_dir / "requirements.txt"
    atomic_write(requirements, pylock.requirements_txt(current.packages).encode())
    python = "python" + ".".join(recipe.environment.python.split(".")[:2])
    sources = []
    for src in recipe.environment.sources:
        sources += ["--extra-index-url" if src.kind == "index" else "--find-links", src.url]
    pip = [python, "-m", "pip", "install", "--no-cache-dir", "--no-deps", "--require-hashes",
           "--only-binary=:all:", "--no-compile", "--target", f"/{SITE}", *sources,
           "-r", "/opt/repro/requirements.txt"]
    work = recipe.image.workdir.rstrip("/")
    files = sorted({*project.code.paths, recipe.path.name, f"{lock_rel}/{lock.PYLOCK}",
                    f"{lock_rel}/{lock.REPRO_LOCK}"})
    labels = {**recipe.image.labels, "org.opencontainers.image.title": recipe.name,
              "dev.repro.recipe": recipe.name, "dev.repro.recipe-digest": recipe.digest(),
              "dev.repro.env-id": current.env_id, "dev.repro.lock-digest": current.pylock_digest}
    env = {"PYTHONPATH": f"/{SITE}", **recipe.image.env}
    lines = [
        f"# Written by `repro export dockerfile` from {lock_rel} (env {current.env_id}).",
        "# Build from the project folder: docker build -f Dockerfile .",
        f"FROM {recipe.image.base}",
        f"COPY {lock_rel}/requirements.txt /opt/repro/requirements.txt",
        f"RUN {json.dumps(pip)}",  # exec form: the base needs Python, not a shell
        "ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(env.items())),
        f"ENV PATH=/{SITE}/bin:$PATH",
        *(f"COPY {rel} {work}/{rel}" for rel in files),
        f"WORKDIR {work}",
        "LABEL " + " ".join(f"{k}={json.dumps(v)}" for k, v in sorted(labels.items())),
    ]
    if recipe.image.entrypoint:
        lines.append(f"ENTRYPOINT {json.dumps(list(recipe.image.entrypoint))}")
    dockerfile = output or recipe.root / "Dockerfile"
    atomic_write(dockerfile, ("\n".join(lines) + "\n").encode())
    return dockerfile, requirements

