"""Typed records of verification: baselines and verification reports, each with one reader
and one writer, versioned; version 1 is read, never written.

    repro.baseline/v2      lockfiles/<name>/baseline.json: the last known good runs
    repro.verify/v2        verifications/<name>/*.json: one verification's verdict
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from builder import hashing
from builder.errors import InputError, StoreError
from builder.records import KEY_V1, Output, load_object, plain, why

BASELINE_SCHEMA = "repro.baseline/v2"
VERIFY_SCHEMA = "repro.verify/v2"
BASELINE_V1 = "repro.baseline/v1"
VERIFY_V1 = "repro.verify/v1"


@dataclass(frozen=True)
class BaselineRun:
    """One known good run of a baseline: its seed and hardware class, what it made."""

    seed: int
    run_key: str
    record: str
    outputs: tuple[Output, ...]
    metrics: dict[str, Any]
    duration: float
    hardware_class: dict[str, Any] | None = None
    evaluation: dict[str, Any] | None = None  # functional: what `evaluate` said of its outputs

    def to_json(self) -> dict[str, Any]:
        out = {**plain(self), "outputs": [o.to_json() for o in self.outputs]}
        if self.evaluation is None:
            del out["evaluation"]
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any], hardware_class: Any = None) -> BaselineRun:
        return cls(int(d["seed"]), d["run_key"], d["record"],
                   tuple(Output.from_json(o) for o in d["outputs"]), dict(d["metrics"]),
                   float(d["duration"]), d.get("hardware_class", hardware_class),
                   d.get("evaluation"))


@dataclass(frozen=True)
class Baseline:
    """A recipe's last known good runs (`repro.baseline/v2`).

    The runs share env, packages, code, data and params; they differ in seed, and in hardware
    class (a bitwise recipe keeps one set of runs per class of machine it was made on).
    """

    recipe: str
    standard: str
    env: str
    packages: dict[str, str]
    code: str
    data: dict[str, str]
    params: dict[str, Any]
    runs: tuple[BaselineRun, ...]
    key_format: str = KEY_V1

    def to_json(self) -> dict[str, Any]:
        return {"schema": BASELINE_SCHEMA, **plain(self),
                "runs": [r.to_json() for r in self.runs]}

    def encode(self) -> bytes:
        return hashing.canonical_json(self.to_json()) + b"\n"

    def for_class(self, hardware_class: dict[str, Any] | None) -> list[BaselineRun]:
        return [r for r in self.runs if r.hardware_class == hardware_class]

    @property
    def classes(self) -> list[dict[str, Any] | None]:
        found: list[dict[str, Any] | None] = []
        for r in self.runs:
            if r.hardware_class not in found:
                found.append(r.hardware_class)
        return found

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Baseline:
        schema = d.get("schema")
        if schema not in (BASELINE_SCHEMA, BASELINE_V1):
            raise ValueError(f"schema is {schema!r}, not {BASELINE_SCHEMA!r}")
        missing = [k for k in ("recipe", "standard", "env", "packages", "code", "data",
                               "params", "runs") if k not in d]
        if missing or not d["runs"]:
            raise ValueError(f"missing {', '.join(missing) or 'runs'}")
        shared_class = d.get("hardware_class")  # v1: one class for all runs
        return cls(d["recipe"], d["standard"], d["env"], dict(d["packages"]), d["code"],
                   dict(d["data"]), dict(d["params"]),
                   tuple(BaselineRun.from_json(r, shared_class) for r in d["runs"]),
                   d.get("key_format", KEY_V1))

    @classmethod
    def decode(cls, data: bytes, path: Path) -> Baseline:
        """Read a committed baseline.

        Raises:
            InputError: not JSON, or not a baseline of a version this repro reads.
        """
        try:
            return cls.from_json(load_object(data, path))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise InputError(f"{path} is not a valid baseline: {why(exc)}",
                             hint="restore it from version control, or set it again with "
                                  "`repro baseline set`") from exc


@dataclass(frozen=True)
class Cause:
    """An identity of the re-run that differs from the baseline's."""

    kind: str  # env, code, data, params, seed, hardware, format
    detail: str


@dataclass(frozen=True)
class OutputCheck:
    """A bitwise comparison of one output with the baseline's."""

    name: str
    seed: int
    baseline: str
    ok: bool
    detail: str
    reproduced: str | None = None
    tensors: dict[str, Any] | None = None  # what tensordiff said, when the bytes differ
    kind: str = "output"

    def to_json(self) -> dict[str, Any]:
        out = plain(self)
        for optional in ("reproduced", "tensors"):
            if out[optional] is None:
                del out[optional]
        return out


@dataclass(frozen=True)
class MetricCheck:
    """The statistical test of one metric against the baseline's."""

    name: str
    test: str
    threshold: float
    baseline_mean: float
    mean: float
    difference: float
    baseline_spread: float
    spread: float
    n_baseline: int
    n: int
    ok: bool
    kind: str = "metric"

    def to_json(self) -> dict[str, Any]:
        return plain(self)


Check = OutputCheck | MetricCheck


@dataclass(frozen=True)
class VerifiedRun:
    seed: int
    run_key: str
    record: str
    duration: float


@dataclass(frozen=True)
class Verification:
    """One `repro verify`: the verdict, its causes and checks (`repro.verify/v2`)."""

    recipe: str
    standard: str
    verdict: str  # reproduced | drifted
    baseline: str  # where the baseline came from: its file, or `run <digest>`
    causes: tuple[Cause, ...]
    checks: tuple[Check, ...]
    runs: tuple[VerifiedRun, ...]
    nondeterminism: tuple[dict[str, Any], ...]
    duration: float
    baseline_duration: float
    started: str
    notes: tuple[str, ...] = ()  # what the run key cannot vouch for (network, no sandbox)
    # wall seconds by phase: fetch (reproduce), environment, training, comparison
    timings: dict[str, float] = field(default_factory=dict)
    target: float | None = None  # the recipe's `time-to-reproduce`, in seconds
    # the baseline's hardware class → this machine's, when a bitwise baseline has no run made
    # on this class (said first: bitwise equality is promised only within a class)
    hardware: str | None = None

    @property
    def reproduced(self) -> bool:
        return self.verdict == "reproduced"

    @property
    def total(self) -> float:
        """Wall seconds to reproduce: the phases, or (reports before phases) the runs."""
        return round(sum(self.timings.values()), 3) if self.timings else self.duration

    @property
    def over_target(self) -> bool:
        return self.target is not None and self.total > self.target

    def to_json(self) -> dict[str, Any]:
        return {"schema": VERIFY_SCHEMA, **plain(self),
                "causes": [plain(c) for c in self.causes],
                "checks": [c.to_json() for c in self.checks],
                "runs": [plain(r) for r in self.runs],
                "nondeterminism": list(self.nondeterminism), "notes": list(self.notes),
                "timings": dict(self.timings), "total": self.total,
                "over_target": self.over_target}

    def encode(self) -> bytes:
        return hashing.canonical_json(self.to_json())

    @classmethod
    def decode(cls, data: bytes, path: Path) -> Verification:
        """Read a kept verification (v2 or v1: the same fields).

        Raises:
            StoreError: unreadable.
        """
        try:
            d = load_object(data, path)
            if d.get("schema") not in (VERIFY_SCHEMA, VERIFY_V1):
                raise ValueError(f"schema is {d.get('schema')!r}, not {VERIFY_SCHEMA!r}")
            checks: list[Check] = []
            for c in d["checks"]:
                rest = {k: v for k, v in c.items() if k != "kind"}
                checks.append(OutputCheck(**rest) if c["kind"] == "output"
                              else MetricCheck(**rest))
            return cls(d["recipe"], d["standard"], d["verdict"], d["baseline"],
                       tuple(Cause(**c) for c in d["causes"]), tuple(checks),
                       tuple(VerifiedRun(**r) for r in d["runs"]),
                       tuple(d["nondeterminism"]), float(d["duration"]),
                       float(d["baseline_duration"]), d["started"], tuple(d.get("notes", ())),
                       {str(k): float(v) for k, v in d.get("timings", {}).items()},
                       None if d.get("target") is None else float(d["target"]),
                       d.get("hardware"))
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"{path} is not a verification report repro can read: "
                             f"{why(exc)}",
                             path, hint=f"remove {path}") from exc
