"""``export_generator``: export a generator held in memory (a notebook, a training script).

``gendeploy export --model file.py:Class`` builds the module from the file and goes through here
too: the module is probed for its served interface (``signature.py``), wrapped so every export
takes ``(z[, labels][, truncation][, noise...])``, then exported, gated and published like any.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from gendeploy.errors import UsageError
from gendeploy.export.api import ExportOptions, OutputKind, export_loaded
from gendeploy.export.manifest import Manifest, Source
from gendeploy.export.signature import NoiseMode, inspect_generator, serving_module
from gendeploy.export.source import LoadedModel, _snake, state_digest

_RECORDABLE = (bool, int, float, str, type(None))  # what the manifest's JSON can hold


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
    """``export_generator`` with its options already made (the CLI's ``--model`` path)."""
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


def load_module(
    module: nn.Module,
    latent_dim: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    forward_kwargs: dict[str, Any] | None = None,
    noise: str = "const",
    source: Source | None = None,
    default_name: str | None = None,
    label: str | None = None,
    log: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Probe ``module`` (eval mode) and describe it for export."""
    if latent_dim < 1 or num_classes < 0 or len(image_shape) != 3 or min(image_shape) < 1:
        raise UsageError("latent_dim and image_shape (C, H, W) must be positive, num_classes >= 0")
    if noise not in {m.value for m in NoiseMode}:
        raise UsageError(f"--noise must be const or seeded, got {noise!r}")
    kwargs = dict(forward_kwargs or {})
    for key, value in kwargs.items():
        if not isinstance(value, _RECORDABLE):
            raise UsageError(
                f"forward_kwargs[{key!r}] is a {type(value).__name__}; the manifest records only "
                "numbers, booleans, strings and None"
            )
    module.eval()
    cls = type(module)
    interface = inspect_generator(
        module,
        latent_dim,
        num_classes,
        image_shape,
        forward_kwargs=kwargs,
        noise=NoiseMode(noise),
        label=label or _label(source, cls),
        log=log,
    )
    if source is None:
        source = Source(
            kind="in_memory",
            path=f"{cls.__module__}:{cls.__qualname__}",
            sha256=module_digest(module),
            model_config={
                "latent_dim": latent_dim,
                "num_classes": num_classes,
                "image_shape": list(image_shape),
            },
        )
    return LoadedModel(
        module=serving_module(module, interface, num_classes),
        latent_dim=latent_dim,
        num_classes=num_classes,
        image_shape=(image_shape[0], image_shape[1], image_shape[2]),
        source=source,
        default_name=default_name or _snake(cls.__name__),
        interface=interface,
    )


def _label(source: Source | None, cls: type) -> str:
    """How messages name the model: ``--model file.py:Class`` when it came from the CLI."""
    if source is not None and source.kind == "user_model":
        return f"--model {source.path}"
    return cls.__name__


def module_digest(module: nn.Module) -> str:
    """What an in-memory export is "the same module" by: its weights and its code (an edited
    ``forward`` must not find the earlier export up to date)."""
    return hashlib.sha256(f"{state_digest(module)}:{code_digest(module)}".encode()).hexdigest()


def code_digest(module: nn.Module) -> str:
    """sha256 over the code of every class in ``module`` that is not torch's own (torch's version
    is recorded anyway), best effort: each class's source, or where Python cannot show it (a
    class typed into a notebook) its methods' byte code; plus the whole file each class comes
    from, which holds the helper functions its ``forward`` calls."""
    digest = hashlib.sha256()
    files: set[str] = set()
    classes = {type(m) for m in module.modules()}
    for cls in sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        if cls.__module__.split(".")[0] == "torch":
            continue
        digest.update(f"{cls.__module__}.{cls.__qualname__}:".encode())
        try:
            digest.update(inspect.getsource(cls).encode())
        except (OSError, TypeError):
            for name, attr in sorted(vars(cls).items()):
                code = getattr(getattr(attr, "__func__", attr), "__code__", None)
                if isinstance(code, types.CodeType):
                    digest.update(name.encode() + _code_bytes(code))
        with contextlib.suppress(OSError, TypeError):
            path = inspect.getsourcefile(cls)
            if path and Path(path).is_file():
                files.add(path)
    for path in sorted(files):
        with contextlib.suppress(OSError):
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _code_bytes(code: types.CodeType) -> bytes:
    """A function's byte code, names and constants (not its file name or line numbers, which a
    notebook changes on every run of the same cell)."""
    parts = [code.co_code, repr(code.co_names).encode()]
    for const in code.co_consts:
        parts.append(
            _code_bytes(const) if isinstance(const, types.CodeType) else repr(const).encode()
        )
    return b"".join(parts)
