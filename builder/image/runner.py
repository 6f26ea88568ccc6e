"""`repro run --in image`: the recipe's command inside its OCI image, through buildah.

No engine needed: `buildah from` the image layout, `buildah run --isolation chroot` with the
run's sandbox folder as the workdir, the data inputs, the params file and builder.runtime
mounted read-only, and the network off (`--network none`) unless the recipe allows it. The
outputs are read from the sandbox folder on the host, never through a symlink.
"""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
from pathlib import Path, PurePosixPath

from builder import proc
from builder.errors import InputError, ToolError
from builder.image.build import SITE, ImageResult, build_image
from builder.project import Project
from builder.records import Software
from builder.runner import Job, software
from builder.sandbox import Sandbox

_RUNTIME = "/opt/repro/runtime"
_PARAMS = "/opt/repro/params.json"
_FACTS = "/opt/repro/facts"  # REPRO_FACTS_DIR: what torch had in force, per process


def _buildah_env() -> dict[str, str]:
    """The image comes from a layout on disk: no registry, so no credentials (a DOCKER_CONFIG
    naming a folder without config.json makes buildah refuse to start)."""
    return {k: v for k, v in proc.clean_env().items()
            if k not in ("DOCKER_CONFIG", "REGISTRY_AUTH_FILE")}


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
        if recipe.image.base == "scratch" and not self.project.lock.debs:  # before building
            raise InputError(f"{recipe.path}: image.base is scratch: the image has no Python to "
                             "run the command", hint="pin a base with Python in image.base")
        built = build_image(self.project)
        import platform  # noqa: PLC0415

        here = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(platform.machine())
        if built.architecture != here:
            raise InputError(f"{recipe.path}: the image is for {built.architecture} "
                             f"({recipe.environment.platform}), this machine is "
                             f"{platform.machine()}: its programs cannot run here",
                             hint="run it on such a machine (or register qemu-user-static's "
                                  "binfmt handlers), or change environment.platform")
        return built

    def identity(self) -> str | None:
        return self.image.digest

    def prepare(self) -> None:
        self.image  # noqa: B018  (building is the point)

    def _buildah(self, runroot: Path, *args: str) -> str:
        storage = ["--root", str(self.project.store.buildah), "--runroot", str(runroot),
                   "--storage-driver", "vfs"]
        try:
            return proc.run(["buildah", *storage, *args], env=_buildah_env(),
                            hint="install buildah (Debian package buildah)").stdout.strip()
        except ToolError as exc:
            raise ToolError(exc.argv, exc.returncode, exc.stderr,
                            hint=exc.hint or "buildah could not run the image") from exc

    def execute(self, job: Job) -> tuple[int, str]:
        from builder.sandbox import BASE_ENV  # noqa: PLC0415

        box, recipe = job.box, self.project.recipe
        work = PurePosixPath(recipe.image.workdir)
        inside = {**BASE_ENV, "HOME": "/tmp", "TMPDIR": "/tmp",  # noqa: S108  (its own /tmp)
                  **job.variables, **job.secrets,
                  "PYTHONPATH": f"/{SITE}:{_RUNTIME}", "REPRO_PARAMS_FILE": _PARAMS,
                  "REPRO_FACTS_DIR": _FACTS}
        if job.metrics is not None:
            inside["REPRO_METRICS_FILE"] = str(work / job.metrics)
        # The sandbox's folder is the workdir: the code (the same files as the image's top
        # layer), the data read-only, and whatever the command writes, read back on the host
        # without following any symlink the image holds.
        mounts = [f"{box.work}:{work}:rw", f"{job.runtime}:{_RUNTIME}:ro",
                  f"{box.repro / 'params.json'}:{_PARAMS}:ro", f"{box.facts}:{_FACTS}:rw"]
        mounts += [f"{host}:{work / rel}:ro" for host, rel in box.data]
        argv = job.argv
        python = self.image.python
        if argv and argv[0] in ("python", "python3") and python:
            argv = [python, *argv[1:]]
        # kept short (storage limits it) and hex only: buildah names the image after the
        # layout's path and refuses capitals, a leading or trailing `_` and `___` in a name,
        # so a store under /home/Alice is reached through a link in this folder
        runroot = Path(tempfile.gettempdir()) / f"repro-bh-{os.urandom(6).hex()}"
        runroot.mkdir(mode=0o700)
        try:
            layout = runroot / "layout"
            layout.symlink_to(self.image.layout)
            ctr = self._buildah(runroot, "from", "--quiet", "--isolation", "chroot",
                                f"oci:{layout}:{self.image.tag}")
            try:
                cmd = ["buildah", "--root", str(self.project.store.buildah), "--runroot",
                       str(runroot), "--storage-driver", "vfs", "run", "--isolation", "chroot",
                       *(f"--env={k}={v}" for k, v in sorted(inside.items())),
                       *(f"--volume={m}" for m in mounts), ctr, "--", *argv]
                if not self.reaches_network(box):
                    # chroot isolation cannot take --network none; a network namespace of its
                    # own around buildah does the same (root only)
                    cmd = ["unshare", "--net", *cmd]
                return proc.supervised(cmd, env=_buildah_env(), cwd=box.root)
            finally:
                self._buildah(runroot, "rm", ctr)
        finally:
            shutil.rmtree(runroot, ignore_errors=True)

    def reaches_network(self, box: Sandbox) -> bool:
        """Whether the command can reach the network: hidden unless the recipe allows it,
        where a network namespace can be made (as root, with util-linux's unshare)."""
        if box.network or box.level == "off":
            return True
        return not (os.geteuid() == 0 and shutil.which("unshare") is not None)

    def intact(self) -> str | None:
        return None  # the container's writes went to its own copy, removed after the run

    def software(self, runtime_digest: str) -> Software:
        current = self.project.lock
        return software(self.image.python or "", {p.name: p.version for p in current.packages},
                        current.pylock_digest, runtime_digest, image=self.image.digest)
