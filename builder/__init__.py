"""repro: a declarative, hermetic build system for ML training environments."""

from __future__ import annotations

__version__ = "0.1.0"

from builder.env import BuildResult, build, exec_in, status
from builder.errors import (
    BuildError,
    CheckFailed,
    InputError,
    LockfileError,
    RecipeError,
    RecipeNotFoundError,
    ReproError,
    ResolutionError,
    ToolError,
)
from builder.lock import LockResult, check, env_id, read_lock, write_lock
from builder.recipe import Recipe, find_recipe, load_recipe, parse_recipe
from builder.resolve import MachineSources
from builder.store import Store

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
