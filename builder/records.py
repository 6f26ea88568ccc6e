"""Typed records of what the store holds: runs and env manifests, each with one reader and one
writer, versioned. Version 1 (written by repro before these types) is read, never written.

    repro.run/v2           a run record: the store's blobs, named by its digest
    repro.envmanifest/v2   envs/<id>/repro-env.json: what an environment was built from

Baselines and verification reports are in verdicts.py (a cache hit never needs them). Every
writer emits canonical JSON (RFC 8785), so the same record has the same digest.

The records are frozen dataclasses; their small parts are NamedTuples, as typed and as
immutable, because a cache-hit `repro run` imports this module and a frozen dataclass costs
about 1 ms to define.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, NamedTuple

from builder import hashing
from builder.errors import StoreError

RUN_SCHEMA = "repro.run/v2"
MANIFEST_SCHEMA = "repro.envmanifest/v2"
RUN_V1 = "repro.run/v1"
MANIFEST_V1 = "repro.env/v1"  # v1 manifests said `format`, the env id's format
KEY_V1 = "repro.runkey/v1"  # the run-key format of every v1 record and baseline


def _no_constant(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def load_object(data: bytes, path: Path | None) -> dict[str, Any]:
    """A JSON object as a record holds it (no NaN, not nested beyond reason).

    Raises:
        ValueError: anything else.
    """
    try:
        value = json.loads(data, parse_constant=_no_constant)
    except RecursionError:
        raise ValueError("nested too deeply to be a record") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path or 'the record'} holds {type(value).__name__}, not an object")
    return value


def why(exc: Exception) -> str:
    """A reader's failure in words: a KeyError says only the key."""
    return f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)


def plain(obj: Any) -> dict[str, Any]:
    """A record's fields as a dict (not deep: nested records write themselves)."""
    if isinstance(obj, tuple):
        return dict(obj._asdict())  # type: ignore[attr-defined]  # a NamedTuple
    return {f.name: getattr(obj, f.name) for f in fields(obj)}


class Output(NamedTuple):
    path: str
    digest: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "digest": self.digest, "size": self.size}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Output:
        if not hashing.is_digest(d["digest"]):  # it names a blob's path: never anything else
            raise ValueError(f"output {d['path']!r} has digest {str(d['digest'])[:80]!r}, "
                             "not blake3:<64 hex>")
        return cls(str(d["path"]), str(d["digest"]), int(d["size"]))


class RecipeRef(NamedTuple):
    name: str
    digest: str
    standard: str


class CodeFacts(NamedTuple):
    digest: str
    files: int
    commit: str | None
    dirty: bool | None


class DataFacts(NamedTuple):
    path: str
    digest: str
    url: str | None = None  # where a fetched input came from (so a run pushed without its
    #                         data can fetch it again)

    def to_json(self) -> dict[str, Any]:
        out = plain(self)
        if self.url is None:
            del out["url"]
        return out


class Software(NamedTuple):
    """The interpreter, the packages, the pylock and repro runtime a run used."""

    python: str
    packages: dict[str, str]
    pylock: str
    repro: str
    runtime: str
    image: str | None = None  # the image digest, for runs inside an image

    @property
    def accelerator_libraries(self) -> dict[str, str]:
        """CUDA runtime, cuDNN, NCCL… as the wheels that bring them (nvidia-cudnn-cu12 …)."""
        return {k: v for k, v in self.packages.items() if k.startswith("nvidia-")}

    def to_json(self) -> dict[str, Any]:
        out = {**plain(self), "accelerator_libraries": self.accelerator_libraries}
        if self.image is None:
            del out["image"]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Software:
        return cls(str(d["python"]), dict(d["packages"]), str(d.get("pylock", "")),
                   str(d.get("repro", "")), str(d.get("runtime", "")), d.get("image"))


@dataclass(frozen=True)
class RunRecord:
    """What one run was made of and what it made (`repro.run/v2`)."""

    run_key: str
    recipe: RecipeRef
    env: str
    code: CodeFacts
    data: dict[str, DataFacts]
    command: tuple[str, ...]
    params: dict[str, Any]
    seed: int
    variables: dict[str, str]
    hardware: dict[str, Any]
    hardware_class: dict[str, Any] | None
    software: Software
    started: str
    ended: str
    duration: float
    exit_status: int
    outputs: tuple[Output, ...] = ()
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    runner: str = "venv"  # where the command ran: "venv" or "image"
    key_format: str = KEY_V1
    sandbox: str = "off"  # bwrap | folder | off (v1 runs ran in the project folder)
    network: bool = True  # whether the command could reach the network
    pass_env: tuple[str, ...] = ()  # names of the caller's variables it got (values never)
    # what the framework had in force in each process that imported it (builder.runtime:
    # CUDA, cuDNN, NCCL, TF32, deterministic flags), distinct ones only; not in the run key
    framework: tuple[dict[str, Any], ...] = ()

    @property
    def succeeded(self) -> bool:
        return self.exit_status == 0 and self.error is None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "schema": RUN_SCHEMA,
            **plain(self),
            "recipe": plain(self.recipe),
            "code": plain(self.code),
            "data": {k: v.to_json() for k, v in self.data.items()},
            "command": list(self.command),
            "pass_env": list(self.pass_env),
            "framework": list(self.framework),
            "software": self.software.to_json(),
            "outputs": [o.to_json() for o in self.outputs],
            "status": "succeeded" if self.succeeded else "failed",
        }
        if self.error is None:
            del out["error"]
        if not self.framework:  # a run that never imported torch: the record as before
            del out["framework"]
        return out

    def encode(self) -> bytes:
        return hashing.canonical_json(self.to_json())

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RunRecord:
        """A v2 record, or a v1 one (no `runner`: an image digest in `software` says image)."""
        schema = d.get("schema")
        if schema not in (RUN_SCHEMA, RUN_V1):
            raise ValueError(f"schema is {schema!r}, not {RUN_SCHEMA!r}")
        software = Software.from_json(d["software"])
        return cls(
            run_key=d["run_key"],
            recipe=RecipeRef(**d["recipe"]),
            env=d["env"],
            code=CodeFacts(**d["code"]),
            data={k: DataFacts(**v) for k, v in d["data"].items()},
            command=tuple(d["command"]),
            params=dict(d["params"]),
            seed=int(d["seed"]),
            variables=dict(d["variables"]),
            hardware=dict(d["hardware"]),
            hardware_class=d["hardware_class"],
            software=software,
            started=d["started"],
            ended=d["ended"],
            duration=float(d["duration"]),
            exit_status=int(d["exit_status"]),
            outputs=tuple(Output.from_json(o) for o in d["outputs"]),
            metrics=dict(d["metrics"]),
            error=d.get("error"),
            runner=d.get("runner", "image" if software.image else "venv"),
            key_format=d.get("key_format", KEY_V1),
            sandbox=d.get("sandbox", "off"),
            network=bool(d.get("network", True)),
            pass_env=tuple(d.get("pass_env", ())),
            framework=tuple(dict(f) for f in d.get("framework", ())),
        )

    @classmethod
    def decode(cls, data: bytes, path: Path | None = None) -> RunRecord:
        """Read a stored record.

        Raises:
            StoreError: not JSON, or not a run record of a version this repro reads.
        """
        try:
            return cls.from_json(load_object(data, path))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path or 'a stored record'} is not a run record repro can "
                             f"read: {why(exc)}", path) from exc


def is_run_record(data: bytes) -> bool:
    try:
        return load_object(data, None).get("schema") in (RUN_SCHEMA, RUN_V1)
    except (ValueError, UnicodeDecodeError):
        return False


@dataclass(frozen=True)
class EnvManifest:
    """What an environment in the store was built from (`repro.envmanifest/v2`)."""

    env: str
    recipe: str
    python: str  # the exact interpreter found, e.g. 3.11.7
    platform: str
    pylock: str  # digest of the pylock.toml it installed (a blob in the store)
    packages: dict[str, str]
    builder: str  # the repro version that built it
    tree: str | None = None  # seal.tree: every entry's content (None: built before sealing)
    fingerprint: str | None = None  # seal.fingerprint: every entry's size and mtime
    files: int | None = None
    # the Nix backend's facts: store_path, drv, root, tool, version, path, added, impure
    nix: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"schema": MANIFEST_SCHEMA, **plain(self)}
        if self.nix is None:  # a virtualenv's manifest, as before
            del out["nix"]
        return out

    def encode(self) -> bytes:
        return hashing.canonical_json(self.to_json())

    @classmethod
    def decode(cls, data: bytes, path: Path) -> EnvManifest:
        """Read an environment's manifest (v2, or v1 which said `format` for `schema`).

        Raises:
            StoreError: unreadable; the environment is rebuilt when removed.
        """
        try:
            d = load_object(data, path)
            schema = d.get("schema", d.get("format"))
            if schema not in (MANIFEST_SCHEMA, MANIFEST_V1):
                raise ValueError(f"schema is {d.get('schema')!r}, not {MANIFEST_SCHEMA!r}")
            if schema == MANIFEST_SCHEMA and not (isinstance(d.get("tree"), str)
                                                  and isinstance(d.get("fingerprint"), str)):
                raise ValueError("it has no seal (tree and fingerprint): a v2 manifest always "
                                 "has one")
            if not hashing.is_digest(d["pylock"]):
                raise ValueError(f"pylock is {str(d['pylock'])[:80]!r}, not blake3:<64 hex>")
            return cls(d["env"], d["recipe"], d["python"], d["platform"], d["pylock"],
                       dict(d["packages"]), d["builder"], d.get("tree"), d.get("fingerprint"),
                       d.get("files"), d.get("nix"))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path} is not an environment manifest repro can read: "
                             f"{why(exc)}",
                             path, hint=f"remove {path.parent}; `repro build` makes it "
                                        "again") from exc
