"""A progress bar with an ETA for the steps of an export that loop: the quality gate drawing its
reference or judging a candidate, the INT8 fallback's ranking and gate passes.

Each step reports the units it has done; the bar (elapsed time, ETA) is drawn on stderr, only on
a terminal (a log or a pipe gets the ``say`` lines, which name each step and its size before it
runs), and is transient: what stays on screen are those lines. A step inside another (the
quality gate judging one of the INT8 fallback's candidates) draws nothing: the outer bar counts.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

Advance = Callable[[int], None]  # units just done
_drawing: list[str] = []  # the bar on screen (one at most)


@contextlib.contextmanager
def progress(label: str, total: int) -> Iterator[Advance]:
    """``advance(n)`` after each ``n`` of ``total`` units."""
    console = Console(stderr=True)
    if not console.is_terminal or total <= 0 or _drawing:
        yield lambda _n: None
        return
    columns = (
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    _drawing.append(label)
    try:
        with Progress(*columns, console=console, transient=True) as bar:
            task = bar.add_task(label, total=total)
            yield lambda n: bar.advance(task, n)
    finally:
        _drawing.pop()
