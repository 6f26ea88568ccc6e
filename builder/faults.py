"""Named fault points, for the kill harness in the tests only.

    REPRO_FAULT=<point>        repro kills itself with SIGKILL when it reaches <point>
    REPRO_FAULT_LOG=<file>     ...after appending the point's name to <file> (proof it got there)
    REPRO_FAULT=delay          a random pause of up to 50 ms at every point instead, so a
                               harness killing at random times lands between them

Points: blob-temp-written, blob-renamed, record-stored, env-installing, env-before-publish,
layer-writing, image-before-index, gc-removing, run-trained. Users never set these.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path

POINTS = ("blob-temp-written", "blob-renamed", "record-stored", "env-installing",
          "env-before-publish", "layer-writing", "image-before-index", "gc-removing",
          "run-trained")


def point(name: str) -> None:
    """Die here if the harness asks for this point (a no-op otherwise)."""
    wanted = os.environ.get("REPRO_FAULT")
    if not wanted:
        return
    if wanted == "delay":
        time.sleep(random.random() * 0.05)  # noqa: S311  (timing, not security)
        return
    if wanted == name:
        log = os.environ.get("REPRO_FAULT_LOG")
        if log:
            with Path(log).open("a") as f:
                f.write(name + "\n")
        os.kill(os.getpid(), signal.SIGKILL)
