"""Running the real `repro` command, and making small real wheels for find-links folders."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def json(self) -> Any:
        lines = self.out.strip().splitlines()
        assert len(lines) == 1, f"expected one JSON line on stdout, got: {self.out!r}"
        return json.loads(lines[0])


def repro(*args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None,
          timeout: float | None = None) -> Result:
    """The `repro` command as a user runs it: a new process, our environment, exit code
    (`timeout`: for a command that must end, where a bug would make it hang)."""
    done = subprocess.run(
        [sys.executable, "-m", "builder", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, check=False,
        env={**os.environ, **(env or {})}, timeout=timeout,
    )
    return Result(done.returncode, done.stdout, done.stderr)


def committed(project: Path) -> Path:
    """The project as a git checkout (code is what git tracks), one commit."""
    git = ["git", "-C", str(project), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "the project"], check=True)
    return project


def make_wheel(folder: Path, name: str, version: str, body: str = "VALUE = 42\n") -> Path:
    """A minimal, valid pure-Python wheel (METADATA, WHEEL, RECORD with hashes)."""
    folder.mkdir(parents=True, exist_ok=True)
    module = name.replace("-", "_")
    dist = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": body,
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: repro-tests\nRoot-Is-Purelib: true\n"
                         "Tag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    wheel = folder / f"{module}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for path, text in files.items():
            zf.writestr(zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0)), text)
    return wheel


def complete_envs(home: Path) -> list[Path]:
    """Environments that look complete in a store (what a lookup would find)."""
    envs = home / "envs"
    return sorted(p for p in envs.iterdir() if (p / "repro-env.json").is_file()) \
        if envs.is_dir() else []


def staging_left(home: Path) -> list[Path]:
    envs = home / "envs"
    return sorted(p for p in envs.iterdir() if p.name.startswith(".")) if envs.is_dir() else []
