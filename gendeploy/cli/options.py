"""Options more than one command takes, declared once."""

from __future__ import annotations

from typing import Annotated

import typer

Threads = Annotated[
    int | None,
    typer.Option(
        min=0,
        help="Compute threads, pinned. Default: the CPUs this process may use (affinity mask, "
        "cgroup quota), one fewer per core another process keeps busy; the environment "
        "variable GENDEPLOY_THREADS pins it too.",
        show_default=False,
    ),
]


def use_threads(threads: int | None) -> None:
    """Size this process's compute threads (``gendeploy.cpus``)."""
    from gendeploy import cpus

    cpus.configure(threads or None)
