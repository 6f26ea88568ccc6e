"""Helpers for training code run by `repro run`: seeding, DataLoader seeding, params, metrics.

    from builder.runtime import seed_everything, params, log_metrics
    seed = seed_everything()            # REPRO_SEED, or the seed given
    lr = params()["lr"]                 # the run's params (REPRO_PARAMS_FILE)
    log_metrics(accuracy=0.93)          # merged into the recipe's metrics file
    mlflow.set_tags(tracker_tags())     # the run key, env id, recipe and code digests

`repro run` puts this module on the run's PYTHONPATH, so it needs no install in the
environment. It imports only the standard library; numpy and torch are imported only when
they are installed and a function needs them.
"""

from __future__ import annotations

import importlib.util
import json
import os
import random
import sys
from pathlib import Path
from typing import Any

__all__ = ["generator", "log_metrics", "params", "record_facts", "seed_everything",
           "tracker_tags", "worker_init_fn"]

# what `repro run` sets, as the tags an experiment tracker's run gets: the run it belongs to
TRACKER_TAGS = {"REPRO_RUN_KEY": "repro.run_key", "REPRO_ENV_ID": "repro.env_id",
                "REPRO_RECIPE_DIGEST": "repro.recipe_digest",
                "REPRO_CODE_DIGEST": "repro.code_digest"}


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


def tracker_tags() -> dict[str, str]:
    """The run's identities as tracker tags (`mlflow.set_tags(tracker_tags())`,
    `wandb.init(config=tracker_tags())`): `repro lookup` then finds the record from any of
    them. Empty outside `repro run`."""
    return {tag: os.environ[var] for var, tag in TRACKER_TAGS.items() if var in os.environ}


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


def _attempt(read: Any) -> Any:
    try:
        return read()
    except Exception:  # a CPU build has no NCCL: a fact it lacks is None
        return None


def torch_facts(torch: Any) -> dict[str, Any]:
    """What torch has in force that can change results and that the run key cannot see:
    its CUDA runtime, cuDNN and NCCL versions, TF32, matmul precision, deterministic flags,
    threads, and the CUDA devices it used (only when CUDA was initialised: never started
    here)."""
    backends = torch.backends
    facts = {
        "torch": str(torch.__version__),
        "cuda_runtime": _attempt(lambda: torch.version.cuda),
        "cudnn": _attempt(backends.cudnn.version),
        "nccl": _attempt(lambda: ".".join(map(str, torch.cuda.nccl.version()))),
        "tf32_matmul": _attempt(lambda: bool(backends.cuda.matmul.allow_tf32)),
        "tf32_cudnn": _attempt(lambda: bool(backends.cudnn.allow_tf32)),
        "float32_matmul_precision": _attempt(torch.get_float32_matmul_precision),
        "deterministic_algorithms": _attempt(torch.are_deterministic_algorithms_enabled),
        "cudnn_deterministic": _attempt(lambda: bool(backends.cudnn.deterministic)),
        "cudnn_benchmark": _attempt(lambda: bool(backends.cudnn.benchmark)),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        "threads": _attempt(torch.get_num_threads),
        "devices": [],
    }
    if _attempt(torch.cuda.is_initialized):
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            facts["devices"].append({"name": p.name, "capability": f"{p.major}.{p.minor}",
                                     "sm_count": p.multi_processor_count,
                                     "memory": p.total_memory})
    return facts


def record_facts() -> None:
    """Write this process's framework facts for the run record (`REPRO_FACTS_DIR/<pid>.json`),
    when torch was imported. Called at exit by the run's sitecustomize; never raises."""
    folder = os.environ.get("REPRO_FACTS_DIR")
    torch = sys.modules.get("torch")
    if not folder or torch is None or not hasattr(torch, "backends"):
        return
    try:
        path = Path(folder) / f"{os.getpid()}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(torch_facts(torch), sort_keys=True))
        tmp.replace(path)
    except Exception:  # noqa: S110  (a run never fails for want of a fact)
        pass
