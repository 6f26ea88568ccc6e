"""Base images for image tests and benchmarks: Debian's python3.11 from .deb files, as an OCI
layout built by repro's own writer, and a CNCF registry on loopback to serve it (and to be a
remote cache: `serve`)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from builder.image import layout, tarball

# What python3.11 needs to import numpy on Debian 12, as .deb files (no maintainer scripts).
DEBS = ["python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "libc6",
        "zlib1g", "libexpat1", "libffi8", "libbz2-1.0", "liblzma5", "libcrypt1", "libgcc-s1",
        "libssl3", "libstdc++6", "libsqlite3-0", "libuuid1", "libtinfo6", "libncursesw6",
        "libreadline8"]


def python_base(work: Path, *, pip: bool = False) -> tuple[Path, str]:
    """An OCI layout (one layer) of a Debian rootfs with python3.11, and its digest.

    With `pip`, Debian's pip wheel is on PYTHONPATH (so `python3.11 -m pip` works without
    running an installer) and the host's CA bundle is where Debian's pip looks for it.

    Raises:
        RuntimeError: apt-get could not download the packages (run apt-get update first).
    """
    debs, rootfs = work / "debs", work / "rootfs"
    debs.mkdir(parents=True)
    names = [*DEBS, "python3-pip-whl"] if pip else DEBS
    done = subprocess.run(["apt-get", "download", *names], cwd=debs, capture_output=True,
                          text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"apt-get download failed: {done.stderr[-300:]}")
    for deb in sorted(debs.glob("*.deb")):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(rootfs)], check=True)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
    if pip:
        wheel = next((rootfs / "usr/share/python-wheels").glob("pip-*.whl"))
        env["PYTHONPATH"] = f"/usr/share/python-wheels/{wheel.name}"
        (rootfs / "etc/ssl/certs").mkdir(parents=True, exist_ok=True)
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", rootfs / "etc/ssl/certs")
    image = layout.assemble([tarball.layer([(rootfs, "")])], architecture="amd64", env=env,
                            entrypoint=[], workdir="/", labels={},
                            created="1970-01-01T00:00:00Z", cmd=["/usr/bin/python3.11"])
    layout.write_layout(image, work / "layout", "base:3.11")
    return work / "layout", image.digest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_registry(work: Path, *, htpasswd: Path | None = None,
                   access_log: Path | None = None) -> tuple[str, subprocess.Popen[bytes]]:
    """`docker-registry serve` on a free loopback port, deletes allowed; with `htpasswd`,
    basic auth; with `access_log`, every request logged there. Returns (host:port, process)."""
    work.mkdir(parents=True, exist_ok=True)
    host = f"127.0.0.1:{free_port()}"
    auth = (f"auth:\n  htpasswd:\n    realm: test\n    path: {htpasswd}\n" if htpasswd else "")
    level = "info" if access_log else "error"
    (work / "config.yml").write_text(
        f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {work / 'data'}\n"
        f"  delete:\n    enabled: true\nhttp:\n  addr: {host}\nlog:\n  level: {level}\n"
        f"  accesslog:\n    disabled: {'false' if access_log else 'true'}\n{auth}")
    sink = access_log.open("ab") if access_log else subprocess.DEVNULL
    server = subprocess.Popen(["docker-registry", "serve", str(work / "config.yml")],
                              stdout=sink, stderr=sink)
    if access_log:
        sink.close()  # type: ignore[union-attr]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://{host}/v2/", timeout=1).close()
            return host, server
        except urllib.error.HTTPError:  # 401: up, and asking for credentials
            return host, server
        except OSError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError("the registry did not start within 30 s")


def push(layout_dir: Path, tag: str, ref: str) -> None:
    subprocess.run(["skopeo", "copy", "--dest-tls-verify=false", f"oci:{layout_dir}:{tag}",
                    f"docker://{ref}"], check=True, capture_output=True)


@dataclass
class Registry:
    host: str
    data: Path  # its storage folder
    log: Path  # its access log

    @property
    def remote(self) -> str:
        return f"{self.host}/team/cache"

    def tags(self) -> list[str]:
        try:
            with urllib.request.urlopen(f"http://{self.host}/v2/team/cache/tags/list") as r:
                return sorted(json.load(r).get("tags") or [])
        except urllib.error.HTTPError as exc:  # no such repository yet
            exc.close()
            if exc.code == 404:
                return []
            raise

    def manifest(self, tag: str) -> dict:  # type: ignore[type-arg]
        request = urllib.request.Request(
            f"http://{self.host}/v2/team/cache/manifests/{tag}",
            headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        with urllib.request.urlopen(request) as r:  # noqa: S310
            return json.load(r)  # type: ignore[no-any-return]

    def blob_file(self, digest: str) -> Path:
        h = digest.removeprefix("sha256:")
        return self.data / "docker/registry/v2/blobs/sha256" / h[:2] / h / "data"


@contextlib.contextmanager
def serve(work: Path, **options: Path) -> Iterator[Registry]:
    """A registry on loopback for one test, its storage and access log in `work`."""
    log = work / "access.log"
    host, server = start_registry(work, access_log=log, **options)
    try:
        yield Registry(host, work / "data", log)
    finally:
        server.terminate()
        server.wait()
