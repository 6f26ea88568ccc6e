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
    "Recipe": "builder.recipe",
    "find_recipe": "builder.recipe",
    "load_recipe": "builder.recipe",
    "parse_recipe": "builder.recipe",
    "MachineSources": "builder.resolve",
    "Store": "builder.store",
}

__all__ = [
    "BuildError",
    "BuildResult",
    "CheckFailed",
    "InputError",
    "LockResult",
    "LockfileError",
    "MachineSources",
    "Recipe",
    "RecipeError",
    "RecipeNotFoundError",
    "ReproError",
    "ResolutionError",
    "Store",
    "ToolError",
    "__version__",
    "build",
    "check",
    "env_id",
    "exec_in",
    "find_recipe",
    "load_recipe",
    "parse_recipe",
    "read_lock",
    "status",
    "write_lock",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'builder' has no attribute {name!r}")
