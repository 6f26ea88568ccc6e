"""`repro run --in image`: the recipe's command inside its OCI image, through buildah.

No engine needed: `buildah from` the image layout, `buildah run --isolation chroot` with the
data inputs, the params file and builder.runtime mounted read-only, then the declared outputs
are read out of the container's own filesystem (`buildah mount`), so an output the command
did not write is missing, as it is in a venv run.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from builder import env, proc
from builder.errors import InputError, ToolError
from builder.image.build import SITE, ImageResult, build_image
from builder.recipe import Recipe
from builder.resolve import MachineSources
from builder.store import Store

if TYPE_CHECKING:
    from builder.run import Plan

_RUNTIME = "/opt/repro/runtime"
_PARAMS = "/opt/repro/params.json"


class ImageRunner:
    def __init__(self, image: ImageResult, python: str, packages: dict[str, str],
                 pylock_digest: str, store: Store) -> None:
        self.image = image
        self.python = python  # the base's interpreter, e.g. /usr/bin/python3.11
        self.packages = packages
        self.pylock_digest = pylock_digest
        self.store = store

    @classmethod
    def build(cls, recipe: Recipe, *, store: Store, mode: str, machine: MachineSources,
              offline: bool, say: Callable[[str], None]) -> ImageRunner:
        """Build (or reuse the layers of) the recipe's image, ready to run in.

        Raises:
            InputError: the base has no Python (a scratch image cannot run the command).
        """
        if recipe.image.base == "scratch":  # refused before building anything
            raise InputError(f"{recipe.path}: image.base is scratch: the image has no Python to "
                             "run the command", hint="pin a base with Python in image.base")
        image = build_image(recipe, store=store, mode=mode, machine=machine, offline=offline,
                            say=say)
        assert image.python is not None  # noqa: S101  (checked against the base while building)
        current, _ = env.current_lock(recipe, "frozen", machine, offline)
        return cls(image, image.python, {p.name: p.version for p in current.packages},
                   current.pylock_digest, store)

    @property
    def identity(self) -> str:
        return self.image.digest

    def _buildah(self, runroot: Path, *args: str) -> str:
        storage = ["--root", str(self.store.root / "buildah"), "--runroot", str(runroot),
                   "--storage-driver", "vfs"]
        try:
            return proc.run(["buildah", *storage, *args],
                            hint="install buildah (Debian package buildah)").stdout.strip()
        except ToolError as exc:
            raise ToolError(exc.argv, exc.returncode, exc.stderr,
                            hint=exc.hint or "buildah could not run the image") from exc

    def execute(self, p: Plan, argv: list[str], variables: dict[str, str], runtime: Path,
                params_file: Path) -> tuple[int, str]:
        recipe, work = p.recipe, PurePosixPath(p.recipe.image.workdir)
        inside = {"PYTHONPATH": f"/{SITE}:{_RUNTIME}", "REPRO_PARAMS_FILE": _PARAMS}
        if p.train.metrics:
            inside["REPRO_METRICS_FILE"] = str(work / p.train.metrics)
        mounts = [f"{runtime}:{_RUNTIME}:ro", f"{params_file}:{_PARAMS}:ro"]
        for d in recipe.data:
            host = (recipe.root / d.path).resolve()
            mounts.append(f"{host}:{work / d.path if not Path(d.path).is_absolute() else host}:ro")
        if argv and argv[0] in ("python", "python3"):
            argv = [self.python, *argv[1:]]
        runroot = Path(tempfile.mkdtemp(prefix="repro-bh-"))  # kept short: storage limits it
        try:
            ctr = self._buildah(runroot, "from", "--quiet", "--isolation", "chroot",
                                f"oci:{self.image.layout}:{self.image.tag}")
            try:
                cmd = ["buildah", "--root", str(self.store.root / "buildah"), "--runroot",
                       str(runroot), "--storage-driver", "vfs", "run", "--isolation", "chroot",
                       *(f"--env={k}={v}" for k, v in sorted((variables | inside).items())),
                       *(f"--volume={m}" for m in mounts), ctr, "--", *argv]
                code, tail = proc.tee(cmd, env=proc.clean_env(), cwd=recipe.root)
                rootfs = Path(self._buildah(runroot, "mount", ctr))
                for out in [*p.train.outputs, *([p.train.metrics] if p.train.metrics else [])]:
                    made = rootfs / str(work / out).lstrip("/")
                    if made.is_file():
                        shutil.copyfile(made, recipe.root / out)
                return code, tail
            finally:
                self._buildah(runroot, "rm", ctr)
        finally:
            shutil.rmtree(runroot, ignore_errors=True)

    def software(self, runtime_digest: str) -> dict[str, Any]:
        from builder.run import software  # noqa: PLC0415  (run imports this module lazily)

        return software(self.python, self.packages, self.pylock_digest, runtime_digest,
                        image=self.image.digest)
