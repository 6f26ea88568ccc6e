"""One project object per command: the recipe, the store, this machine's package sources and
the command's options, and what follows from them, each computed once when first asked for:
the lock, the code state, the data digests and the hardware facts.

    project = Project.open("repro.toml", mode="locked")
    project.lock.env_id          # read (and checked, per the mode) once
    env.build(project)           # every library function takes the project
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from builder.recipe import Recipe, find_recipe
from builder.resolve import NO_MACHINE_SOURCES, MachineSources
from builder.schema import load_recipe
from builder.store import Store

if TYPE_CHECKING:
    from builder.inputs import CodeState
    from builder.lock import Lock
    from builder.remote import Remote

log = logging.getLogger(__name__)
MODES = ("auto", "locked", "frozen")


class Options(NamedTuple):
    """How a command treats the lock and the network.

    mode: `auto` re-locks a stale lock first; `locked` fails on one; `frozen` uses the lock
        as it is, unchecked.
    """

    mode: str = "auto"
    offline: bool = False
    machine: MachineSources = NO_MACHINE_SOURCES


DEFAULTS = Options()


class Project:
    """A recipe as one command sees it."""

    def __init__(self, recipe: Recipe, store: Store, options: Options = DEFAULTS) -> None:
        if options.mode not in MODES:
            raise ValueError(f"mode {options.mode!r} is not one of {MODES}")
        self.recipe = recipe
        self.store = store
        self.options = options
        self.relocked = False
        self.remote: Remote | None = None  # the remote cache this command uses, if any

    @classmethod
    def open(
        cls, recipe: str | os.PathLike[str] | None = None, *, store: Store | None = None,
        mode: str = "auto", offline: bool = False,
        machine: MachineSources = NO_MACHINE_SOURCES,
    ) -> Project:
        """The recipe at `recipe` (a file or folder; default repro.toml here or above).

        Raises:
            RecipeNotFoundError, RecipeError: no recipe, or one that does not validate.
        """
        return cls(load_recipe(find_recipe(recipe)), store or Store.open(),
                   Options(mode, offline, machine))

    @property
    def root(self) -> Path:
        return self.recipe.root

    @property
    def offline(self) -> bool:
        return self.options.offline

    @property
    def machine(self) -> MachineSources:
        return self.options.machine

    @functools.cached_property
    def lock(self) -> Lock:
        """The lock to build and run from, per the mode; a stale one is re-locked in `auto`.

        Raises:
            CheckFailed: `locked` and the lock is stale, or the lock was tampered with.
            LockfileError: `frozen` and there is no lock.
        """
        from builder import lock  # noqa: PLC0415  (lock imports the resolver)

        mode = self.options.mode
        if mode == "frozen":
            return lock.read_lock(self.recipe)
        current, stale, tampered = lock.inspect(self.recipe)
        if tampered or (mode == "locked" and stale):
            lock.refuse(self.recipe, stale, tampered)
        if stale or current is None:
            log.info("Locking %s: %s", self.recipe.name, "; ".join(stale))
            current = lock.write_lock(self).lock
            self.relocked = True
        return current

    @functools.cached_property
    def code(self) -> CodeState:
        """The code digest and the files it covers."""
        from builder import inputs  # noqa: PLC0415

        with inputs.stat_cache(self.store.stat_cache) as cache:
            return inputs.code_state(self.recipe, cache, self.store.root)

    @functools.cached_property
    def data(self) -> dict[str, str]:
        """The digest of each `[data]` input.

        Raises:
            InputError: an input does not exist.
            FetchError: an input named by URL and sha256 could not be fetched (one named by
                BLAKE3 is not fetched until a run reads it).
        """
        from builder import inputs  # noqa: PLC0415

        with inputs.stat_cache(self.store.stat_cache) as cache:
            return inputs.data_digests(self.recipe, cache, self.store)

    def digest_inputs(self) -> None:
        """Compute the code state and the data digests together, in one stat-cache session
        (a run key needs both; one SQLite session is ~5 ms less than two)."""
        from builder import inputs  # noqa: PLC0415

        if "code" in self.__dict__ and "data" in self.__dict__:
            return
        with inputs.stat_cache(self.store.stat_cache) as cache:
            if "code" not in self.__dict__:
                self.__dict__["code"] = inputs.code_state(self.recipe, cache, self.store.root)
            if "data" not in self.__dict__:
                self.__dict__["data"] = inputs.data_digests(self.recipe, cache, self.store)

    @functools.cached_property
    def hardware(self) -> dict[str, Any]:
        from builder import hardware  # noqa: PLC0415

        return hardware.facts()
