"""One progress helper for long work: a rich bar on a terminal, nothing otherwise.

    with progress("Layers", total=len(packages)) as advance:
        for pkg in packages:
            ...
            advance(1)

With `unit="bytes"` the bar shows throughput. Nothing is drawn when stderr is not a terminal,
when progress messages are off (`-q`), or under `-v` (the log lines say it all).
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator

log = logging.getLogger("builder")


def _wanted() -> bool:
    return (sys.stderr.isatty() and log.isEnabledFor(logging.INFO)
            and not log.isEnabledFor(logging.DEBUG))


@contextlib.contextmanager
def progress(description: str, total: float | None, *,
             unit: str = "items") -> Iterator[Callable[[float], None]]:
    """A callable that advances the bar by its argument; the bar goes when the block ends."""
    if not _wanted():
        yield lambda _: None
        return
    from rich.console import Console  # noqa: PLC0415  (rich costs ~60 ms to import)
    from rich.progress import (  # noqa: PLC0415
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = [TextColumn("{task.description}"), BarColumn()]
    columns += ([DownloadColumn(), TransferSpeedColumn()] if unit == "bytes"
                else [MofNCompleteColumn()])
    columns.append(TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n: bar.advance(task, n)
