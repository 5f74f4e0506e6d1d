"""``export_generator``: export a generator held in memory (a notebook, a training script).

The module is probed for its served interface (``source.load_module``, as for ``gendeploy export
--model file.py:Class``), wrapped so every export takes ``(z[, labels][, truncation][, noise...])``,
then exported, gated and published like any (``api.export_loaded``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from gendeploy.errors import UsageError
from gendeploy.export.api import export_loaded
from gendeploy.export.options import ExportOptions
from gendeploy.export.source import LoadedModel, load_module
from gendeploy.manifest import Manifest, OutputKind, Source


def export_generator(
    module: nn.Module,
    *,
    latent_dim: int,
    image_shape: tuple[int, int, int],
    num_classes: int = 0,
    out: Path | str | None = None,
    name: str | None = None,
    fp16: bool = False,
    int8: bool = False,
    calibration_samples: int | None = None,
    max_frechet_ratio: float = 1.10,
    output: str = "float",
    max_batch: int = 64,
    opt_batch: int = 0,
    require_engine: bool = False,
    forward_kwargs: dict[str, Any] | None = None,
    noise: str = "const",
    force: bool = False,
    log: Callable[[str], None] | None = print,
    source: Source | None = None,
    command: str | None = None,
) -> Manifest:
    """Export, gate and publish ``module``; returns the manifest.

    Each step is reported to ``log`` (default ``print``: a notebook shows what happened, "up to
    date" or "published" last; ``log=None`` is silent).

    ``module`` is put in eval mode. ``forward_kwargs`` are passed to every call (recorded in the
    manifest); ``noise="seeded"`` serves buffers named ``*noise*`` as per-request inputs drawn
    from each request's seed. ``source`` says where the module came from (default: in memory, not
    rebuildable from the manifest alone). ``int8`` adds the quality-gated INT8 artifact.
    """
    if output not in {k.value for k in OutputKind}:
        raise UsageError(f"output must be float or uint8, got {output!r}")
    options = ExportOptions(
        fp16=fp16,
        output=OutputKind(output),
        max_batch=max_batch,
        opt_batch=opt_batch,
        require_engine=require_engine,
        int8=int8,
        calibration_samples=calibration_samples,
        max_frechet_ratio=max_frechet_ratio,
    )
    return export_module(
        module,
        options,
        latent_dim=latent_dim,
        image_shape=image_shape,
        num_classes=num_classes,
        out=out,
        name=name,
        forward_kwargs=forward_kwargs,
        noise=noise,
        force=force,
        log=log,
        source=source,
        command=command,
    )


def export_module(
    module: nn.Module,
    options: ExportOptions,
    *,
    latent_dim: int,
    image_shape: tuple[int, int, int],
    num_classes: int = 0,
    out: Path | str | None = None,
    name: str | None = None,
    forward_kwargs: dict[str, Any] | None = None,
    noise: str = "const",
    force: bool = False,
    log: Callable[[str], None] | None = None,
    source: Source | None = None,
    command: str | None = None,
) -> Manifest:
    """``export_generator`` with its options already made."""
    if not isinstance(module, nn.Module):
        raise UsageError(f"export_generator needs an nn.Module, got {type(module).__name__}")

    def load(say: Callable[[str], None]) -> LoadedModel:
        return load_module(
            module,
            latent_dim,
            num_classes,
            image_shape,
            forward_kwargs=forward_kwargs,
            noise=noise,
            source=source,
            log=say,
        )

    return export_loaded(load, options, name=name, out=out, force=force, command=command, log=log)
