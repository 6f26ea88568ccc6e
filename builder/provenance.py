"""`repro export provenance`: a run record as an in-toto Statement with a SLSA v1 predicate."""

from __future__ import annotations

from typing import Any

from builder import hashing, pylock
from builder.records import RunRecord
from builder.store import Store

STATEMENT = "https://in-toto.io/Statement/v1"
PREDICATE = "https://slsa.dev/provenance/v1"
BUILD_TYPE = "urn:repro:buildtype:run:v1"


def _blake3(digest: str) -> str:
    return digest.removeprefix(hashing.PREFIX)


def statement(store: Store, record_digest: str, record: RunRecord) -> dict[str, Any]:
    """The Statement: subjects are the run's outputs (sha256 and blake3), the predicate
    says how they were made: recipe, command, params, seed, code, data and every package.

    Raises:
        StoreError: an output's blob is missing or damaged.
    """
    subjects = [{"name": o.path,
                 "digest": {"sha256": hashing.sha256_file(store.blobs.checked_path(o.digest)),
                            "blake3": _blake3(o.digest)}}
                for o in record.outputs]
    code = record.code
    deps: list[dict[str, Any]] = [{
        "name": "code",
        "digest": {"blake3": _blake3(code.digest)},
        "annotations": {"git_commit": code.commit, "git_dirty": code.dirty},
    }]
    deps += [{"name": f"data/{name}", "digest": {"blake3": _blake3(d.digest)},
              "annotations": {"path": d.path}} for name, d in sorted(record.data.items())]
    lock_digest = record.software.pylock
    if lock_digest and store.blobs.has(lock_digest):
        for pkg in pylock.loads(store.blobs.get(lock_digest).decode(),
                                store.blobs.path(lock_digest)):
            for a in pkg.wheels or pkg.artefacts:
                deps.append({"uri": f"pkg:pypi/{pkg.name}@{pkg.version}",
                             "downloadLocation": a.url, "digest": {"sha256": a.sha256}})
    return {
        "_type": STATEMENT,
        "subject": subjects,
        "predicateType": PREDICATE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {
                    "recipe": record.recipe._asdict(),
                    "command": list(record.command),
                    "params": record.params,
                    "seed": record.seed,
                },
                "internalParameters": {
                    "env": record.env,
                    "variables": record.variables,
                    "hardware_class": record.hardware_class,
                    "python": record.software.python,
                },
                "resolvedDependencies": deps,
            },
            "runDetails": {
                "builder": {"id": "urn:repro:builder",
                            "version": {"repro": record.software.repro}},
                "metadata": {"invocationId": record.run_key,
                             "startedOn": record.started, "finishedOn": record.ended},
                "byproducts": [{"name": "run record", "mediaType": "application/json",
                                "digest": {"blake3": _blake3(record_digest)}}],
            },
        },
    }
