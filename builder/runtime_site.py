"""The `sitecustomize` of a run's PYTHONPATH (repro copies this file there under that name).

Python imports it at start-up in every interpreter the training command starts. It only
registers an exit hook: when the process ends, `builder.runtime.record_facts` writes what
the framework had in force (torch's CUDA, cuDNN and NCCL versions, TF32 and deterministic
flags) for the run record, if torch was imported and repro asked for it (REPRO_FACTS_DIR).
Nothing is imported before the exit, so a process that never imports torch pays nothing.
"""

import atexit
import os

if os.environ.get("REPRO_FACTS_DIR"):

    def _record() -> None:
        try:  # a project's own `builder` package may shadow repro's: then no facts
            from builder.runtime import record_facts  # noqa: PLC0415
        except ImportError:
            return
        record_facts()

    atexit.register(_record)
