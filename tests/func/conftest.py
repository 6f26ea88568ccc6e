"""Fixtures the functional tests share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.func.helpers import repro


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, str]:
    """A signing key made by `repro key generate`: (private key file, public key)."""
    path = tmp_path / "keys" / "ci.key"
    path.parent.mkdir()
    made = repro("key", "generate", path)
    assert made.code == 0, made.err
    return path, made.out.strip().splitlines()[-1]
