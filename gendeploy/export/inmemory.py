"""``export_generator``: export a generator held in memory (a notebook, a training script).

A thin adapter over ``api.export``: the module is probed for its served interface
(``source.load_module``, as for ``gendeploy export --model file.py:Class``), wrapped so every
export takes ``(z[, labels][, truncation][, noise...])``, then exported, gated and published like
any. Its options are ``ExportOptions``, given whole or as keywords.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from gendeploy.errors import UsageError
from gendeploy.export.api import export
from gendeploy.export.options import ExportOptions, ModelSpec
from gendeploy.manifest import Manifest, Source


def export_generator(
    module: nn.Module,
    *,
    latent_dim: int,
    image_shape: tuple[int, int, int],
    num_classes: int = 0,
    out: Path | str | None = None,
    name: str | None = None,
    options: ExportOptions | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    noise: str = "const",
    force: bool = False,
    log: Callable[[str], None] | None = print,
    source: Source | None = None,
    command: str | None = None,
    **option_fields: Any,
) -> Manifest:
    """Export, gate and publish ``module``; returns the manifest.

    ``options``, or its fields as keywords (``fp16=True``, ``int8=True``, ``output="uint8"``,
    ``max_batch=...``: see ``ExportOptions``). Each step is reported to ``log`` (default
    ``print``: a notebook shows what happened, "up to date" or "published" last; ``log=None`` is
    silent).

    ``module`` is put in eval mode. ``forward_kwargs`` are passed to every call (recorded in the
    manifest); ``noise="seeded"`` serves buffers named ``*noise*`` as per-request inputs drawn
    from each request's seed. ``source`` says where the module came from (default: in memory, not
    rebuildable from the manifest alone).
    """
    if options is not None and option_fields:
        raise UsageError(f"pass options= or its fields ({', '.join(option_fields)}), not both")
    spec = ModelSpec(
        module=module,
        latent_dim=latent_dim,
        num_classes=num_classes,
        image_shape=image_shape,
        forward_kwargs=forward_kwargs,
        noise=noise,
        source=source,
    )
    options = options or ExportOptions(**option_fields)
    return export(spec, options, name=name, out=out, force=force, command=command, log=log)
