"""What an image says about itself: its repro labels, from a layout or the store's index."""

from __future__ import annotations

import json
from pathlib import Path

from builder.store import Store, atomic_write

_PREFIX = "dev.repro."


def remember(store: Store, digest: str, labels: dict[str, str]) -> None:
    """Index a built image by its manifest digest (`images/by-digest/<hex>.json`)."""
    facts = {k.removeprefix(_PREFIX): v for k, v in labels.items() if k.startswith(_PREFIX)}
    atomic_write(store.images.facts(digest), json.dumps(facts, sort_keys=True).encode())


def labels(target: Path | str, store: Store) -> tuple[str, dict[str, str]]:
    """(manifest digest, repro facts) of an OCI layout folder or a digest repro built.

    An unknown digest gives empty facts: not found.
    """
    if isinstance(target, Path):
        index = json.loads((target / "index.json").read_text())
        digest = index["manifests"][0]["digest"]
        blobs = target / "blobs" / "sha256"
        manifest = json.loads((blobs / digest.removeprefix("sha256:")).read_bytes())
        config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:"))
                            .read_bytes())
        found = config.get("config", {}).get("Labels") or {}
        return digest, {k.removeprefix(_PREFIX): v for k, v in found.items()
                        if k.startswith(_PREFIX)}
    path = store.images.facts(target)
    return target, json.loads(path.read_text()) if path.is_file() else {}
