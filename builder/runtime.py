"""Helpers for training code run by `repro run`: seeding, DataLoader seeding, params, metrics.

    from builder.runtime import seed_everything, params, log_metrics
    seed = seed_everything()            # REPRO_SEED, or the seed given
    lr = params()["lr"]                 # the run's params (REPRO_PARAMS_FILE)
    log_metrics(accuracy=0.93)          # merged into the recipe's metrics file

`repro run` puts this module on the run's PYTHONPATH, so it needs no install in the
environment. It imports only the standard library; numpy and torch are imported only when
they are installed and a function needs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
from pathlib import Path
from typing import Any

__all__ = ["generator", "log_metrics", "params", "seed_everything", "worker_init_fn"]


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def seed_everything(seed: int | None = None, *, deterministic: bool = True) -> int:
    """Seed Python, numpy and torch (CPU and CUDA); make torch's algorithms deterministic.

    Args:
        seed: the seed; default `REPRO_SEED` (set by `repro run`), else 0.
        deterministic: also `torch.use_deterministic_algorithms(True)` and cuDNN's
            deterministic mode (slower; errors on ops that have no deterministic version).

    Returns the seed used.
    """
    if seed is None:
        seed = int(os.environ.get("REPRO_SEED", "0"))
    random.seed(seed)
    if _installed("numpy"):
        import numpy as np

        np.random.seed(seed % 2**32)
    if _installed("torch"):
        import torch

        torch.manual_seed(seed)
        torch.cuda.manual_seed_all(seed)
        if deterministic:
            # cuBLAS needs this before its first call to be deterministic.
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False
    return seed


def worker_init_fn(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: seed each worker from torch's per-worker seed."""
    import torch

    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    if _installed("numpy"):
        import numpy as np

        np.random.seed(seed)


def generator(seed: int | None = None) -> Any:
    """A seeded `torch.Generator` for a DataLoader's shuffling (pass as `generator=`)."""
    import torch

    g = torch.Generator()
    g.manual_seed(int(os.environ.get("REPRO_SEED", "0")) if seed is None else seed)
    return g


def params() -> dict[str, Any]:
    """The run's params (the recipe's, with `--param` overrides), from REPRO_PARAMS_FILE."""
    path = os.environ.get("REPRO_PARAMS_FILE")
    if not path:
        return {}
    data: dict[str, Any] = json.loads(Path(path).read_text())
    return data


def log_metrics(metrics: dict[str, Any] | None = None, **more: Any) -> dict[str, Any]:
    """Merge metrics into the run's metrics file (REPRO_METRICS_FILE, else metrics.json).

    Returns everything logged so far.
    """
    path = Path(os.environ.get("REPRO_METRICS_FILE", "metrics.json"))
    current: dict[str, Any] = json.loads(path.read_text()) if path.is_file() else {}
    current.update(metrics or {})
    current.update(more)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return current
