"""repro: a declarative, hermetic build system for ML training environments.

The public API, imported lazily so that `repro --help` and a cached `repro build` start fast.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "BuildResult": "builder.env",
    "build": "builder.env",
    "exec_in": "builder.env",
    "status": "builder.env",
    "BuildError": "builder.errors",
    "CheckFailed": "builder.errors",
    "InputError": "builder.errors",
    "LockfileError": "builder.errors",
    "RecipeError": "builder.errors",
    "RecipeNotFoundError": "builder.errors",
    "ReproError": "builder.errors",
    "ResolutionError": "builder.errors",
    "ToolError": "builder.errors",
    "LockResult": "builder.lock",
    "check": "builder.lock",
    "env_id": "builder.lock",
    "read_lock": "builder.lock",
    "write_lock": "builder.lock",
    "RegistryError": "builder.errors",
    "RunFailed": "builder.errors",
    "FetchError": "builder.errors",
    "MissingPart": "builder.errors",
    "NothingMatches": "builder.errors",
    "Reproduction": "builder.reproduce",
    "reproduce": "builder.reproduce",
    "StoreError": "builder.errors",
    "Options": "builder.project",
    "Project": "builder.project",
    "Recipe": "builder.recipe",
    "find_recipe": "builder.recipe",
    "Baseline": "builder.verdicts",
    "EnvManifest": "builder.records",
    "RunRecord": "builder.records",
    "Verification": "builder.verdicts",
    "MachineSources": "builder.resolve",
    "RunResult": "builder.run",
    "run": "builder.run",
    "ImageRunner": "builder.image.runner",
    "Runner": "builder.runner",
    "VenvRunner": "builder.runner",
    "load_recipe": "builder.schema",
    "parse_recipe": "builder.schema",
    "Store": "builder.store",
    "verify": "builder.verify",
}

__all__ = [
    "Baseline",
    "BuildError",
    "BuildResult",
    "CheckFailed",
    "EnvManifest",
    "FetchError",
    "ImageRunner",
    "InputError",
    "LockResult",
    "LockfileError",
    "MachineSources",
    "MissingPart",
    "NothingMatches",
    "Options",
    "Project",
    "Recipe",
    "RecipeError",
    "RecipeNotFoundError",
    "RegistryError",
    "ReproError",
    "Reproduction",
    "ResolutionError",
    "RunFailed",
    "RunRecord",
    "RunResult",
    "Runner",
    "Store",
    "StoreError",
    "ToolError",
    "VenvRunner",
    "Verification",
    "__version__",
    "build",
    "check",
    "env_id",
    "exec_in",
    "find_recipe",
    "load_recipe",
    "parse_recipe",
    "read_lock",
    "reproduce",
    "run",
    "status",
    "verify",
    "write_lock",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'builder' has no attribute {name!r}")
