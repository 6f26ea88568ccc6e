"""`repro run --in image`: the recipe's command inside its OCI image, through buildah.

No engine needed: `buildah from` the image layout, `buildah run --isolation chroot` with the
data inputs, the params file and builder.runtime mounted read-only, then the declared outputs
are read out of the container's own filesystem (`buildah mount`), so an output the command
did not write is missing, as it is in a venv run.
"""

from __future__ import annotations

import functools
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from builder import proc
from builder.errors import InputError, ToolError
from builder.image.build import SITE, ImageResult, build_image
from builder.project import Project
from builder.records import Software
from builder.runner import Job, software

_RUNTIME = "/opt/repro/runtime"
_PARAMS = "/opt/repro/params.json"


class ImageRunner:
    """The recipe's OCI image; its digest joins the run key."""

    kind = "image"

    def __init__(self, project: Project) -> None:
        self.project = project

    @functools.cached_property
    def image(self) -> ImageResult:
        """The recipe's image, built (or its layers reused from the store).

        Raises:
            InputError: the base has no Python (a scratch image cannot run the command).
        """
        recipe = self.project.recipe
        if recipe.image.base == "scratch":  # refused before building anything
            raise InputError(f"{recipe.path}: image.base is scratch: the image has no Python to "
                             "run the command", hint="pin a base with Python in image.base")
        return build_image(self.project)

    def identity(self) -> str | None:
        return self.image.digest

    def prepare(self) -> None:
        self.image  # noqa: B018  (building is the point)

    def _buildah(self, runroot: Path, *args: str) -> str:
        storage = ["--root", str(self.project.store.buildah), "--runroot", str(runroot),
                   "--storage-driver", "vfs"]
        try:
            return proc.run(["buildah", *storage, *args],
                            hint="install buildah (Debian package buildah)").stdout.strip()
        except ToolError as exc:
            raise ToolError(exc.argv, exc.returncode, exc.stderr,
                            hint=exc.hint or "buildah could not run the image") from exc

    def execute(self, job: Job) -> tuple[int, str]:
        recipe = self.project.recipe
        work = PurePosixPath(recipe.image.workdir)
        inside = {"PYTHONPATH": f"/{SITE}:{_RUNTIME}", "REPRO_PARAMS_FILE": _PARAMS}
        if job.metrics_file is not None:
            inside["REPRO_METRICS_FILE"] = str(work / job.metrics_file.relative_to(job.workdir))
        mounts = [f"{job.runtime}:{_RUNTIME}:ro", f"{job.params_file}:{_PARAMS}:ro"]
        for d in recipe.data:
            host = (recipe.root / d.path).resolve()
            mounts.append(f"{host}:{work / d.path if not Path(d.path).is_absolute() else host}:ro")
        argv = job.argv
        python = self.image.python
        if argv and argv[0] in ("python", "python3") and python:
            argv = [python, *argv[1:]]
        runroot = Path(tempfile.mkdtemp(prefix="repro-bh-"))  # kept short: storage limits it
        try:
            ctr = self._buildah(runroot, "from", "--quiet", "--isolation", "chroot",
                                f"oci:{self.image.layout}:{self.image.tag}")
            try:
                cmd = ["buildah", "--root", str(self.project.store.buildah), "--runroot",
                       str(runroot), "--storage-driver", "vfs", "run", "--isolation", "chroot",
                       *(f"--env={k}={v}" for k, v in sorted((job.variables | inside).items())),
                       *(f"--volume={m}" for m in mounts), ctr, "--", *argv]
                code, tail = proc.tee(cmd, env=proc.clean_env(), cwd=job.workdir)
                rootfs = Path(self._buildah(runroot, "mount", ctr))
                made = [*job.outputs]
                if job.metrics_file is not None:
                    made.append(str(job.metrics_file.relative_to(job.workdir)))
                for out in made:
                    inner = rootfs / str(work / out).lstrip("/")
                    if inner.is_file():
                        shutil.copyfile(inner, job.workdir / out)
                return code, tail
            finally:
                self._buildah(runroot, "rm", ctr)
        finally:
            shutil.rmtree(runroot, ignore_errors=True)

    def software(self, runtime_digest: str) -> Software:
        current = self.project.lock
        return software(self.image.python or "", {p.name: p.version for p in current.packages},
                        current.pylock_digest, runtime_digest, image=self.image.digest)
