"""Where the eager generator comes from: a trainer checkpoint or any user ``nn.Module``
(image-to-image models: ``image_source.py``).

Both paths end in a ``LoadedModel``: the module in eval mode plus the facts export needs (latent
size, classes, image shape) and a ``Source`` record that lets ``load_eager`` rebuild the very same
module later from the manifest alone (bench's eager row, serving's reference).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from gendeploy.errors import CheckpointError, ExportError, UsageError
from gendeploy.export.image_source import (
    UNIT_RANGE,
    image_eager,
    load_image_spec,
    load_published,
    probe_image_model,
)
from gendeploy.export.loaded import LoadedModel
from gendeploy.export.options import ModelSpec
from gendeploy.export.signature import inspect_generator, serving_module
from gendeploy.export.user_module import build_user_module, module_digest, snake
from gendeploy.manifest import (
    Artifact,
    Manifest,
    NoiseMode,
    OutputKind,
    Source,
    TensorSpec,
    Variant,
    image_specs,
    sha256_file,
)
from gendeploy.trainer.checkpoint import load_generator

CHECKPOINT_NAMES = ("checkpoint.pt", "checkpoint_final.pt", "last.pt")
# a published image-to-image state dict (ESRGAN, Real-ESRGAN, pix2pix, CycleGAN, spandrel's)
PUBLISHED_SUFFIXES = (".safetensors", ".pth")
Say = Callable[[str], None]


def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint file, or a run directory holding one."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        found = sorted(path.glob("*.pt"))
        if len(found) == 1:
            return found[0]
        raise CheckpointError(f"no checkpoint in {path}: expected {CHECKPOINT_NAMES[0]}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (pass runs/<name>/checkpoint.pt)")
    return path


def load_checkpoint_model(path: Path | str, log: Say | None = None) -> LoadedModel:
    """A trainer checkpoint, or a published image-to-image state dict (``PUBLISHED_SUFFIXES``:
    ``image_source.load_published``)."""
    ckpt_path = resolve_checkpoint(path).resolve()
    if ckpt_path.suffix in PUBLISHED_SUFFIXES:
        return load_published(ckpt_path, log)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's pickle-protocol note on files it then refuses
        module, ckpt = load_generator(ckpt_path)
    cfg = ckpt.model_config
    run_dir = ckpt_path.parent.name
    source = Source(
        kind="checkpoint",
        path=str(ckpt_path),
        sha256=sha256_file(ckpt_path),
        model_config=cfg.to_dict(),
        dataset=str(ckpt.train_config.get("dataset", "")),
    )
    if cfg.image_to_image:
        return probe_image_model(
            module,
            arch=cfg.arch.value,
            value_range=UNIT_RANGE,
            source=source,
            default_name=run_dir or ckpt_path.stem,
            loaded_by="checkpoint",
            in_channels=cfg.input_shape[0],
            label=f"{ckpt_path.name} ({cfg.arch.value})",
            say=log,
            test_set="digits" if source.dataset == "digits" else "synthetic",
            input_blur=float(ckpt.train_config.get("input_blur", 0.0)),
        )
    return LoadedModel(
        module=module,
        latent_dim=cfg.latent_dim,
        num_classes=cfg.num_classes,
        image_shape=cfg.image_shape,
        source=source,
        default_name=run_dir or ckpt_path.stem,
    )


def load_spec(spec: ModelSpec, log: Callable[[str], None] | None = None) -> LoadedModel:
    """The generator ``spec`` names, loaded and probed for export: a checkpoint as it was
    trained; a ``--model`` file or a module in memory probed for its served interface."""
    if spec.checkpoint is not None:
        return load_checkpoint_model(spec.checkpoint, log)
    if spec.image_to_image:
        return load_image_spec(spec, log)
    latent_dim, image_shape = spec.latent_dim, spec.image_shape
    assert latent_dim is not None and image_shape is not None  # ModelSpec checked them
    num_classes = spec.num_classes or 0
    label = None
    if spec.module is not None:
        if not isinstance(spec.module, nn.Module):
            raise UsageError(
                f"export_generator needs an nn.Module, got {type(spec.module).__name__}"
            )
        module, source, default_name = spec.module, spec.source, None
    else:
        assert spec.model is not None
        module, source, default_name = build_user_model(
            spec.model, spec.weights, latent_dim, num_classes, image_shape, spec.random_weights
        )
        label = f"--model {spec.model}"
    return load_module(
        module,
        latent_dim,
        num_classes,
        image_shape,
        forward_kwargs=spec.forward_kwargs,
        noise=spec.noise,
        source=source,
        default_name=default_name,
        label=label,
        log=log,
    )


def load_user_model(
    spec: str,
    weights: Path | str | None,
    latent_dim: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    forward_kwargs: dict[str, Any] | None = None,
    noise: str = "const",
    log: Callable[[str], None] | None = None,
    random_weights: bool = False,
) -> LoadedModel:
    """``file.py:Class`` or ``package.module:factory``, called without arguments, plus weights;
    probed for its served interface like any module given to ``export_generator``."""
    model = ModelSpec(
        model=spec,
        weights=Path(weights) if weights is not None else None,
        latent_dim=latent_dim,
        num_classes=num_classes,
        image_shape=image_shape,
        forward_kwargs=forward_kwargs,
        noise=noise,
        random_weights=random_weights,
    )
    return load_spec(model, log)


def build_user_model(
    spec: str,
    weights: Path | str | None,
    latent_dim: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    random_weights: bool = False,
) -> tuple[nn.Module, Source, str]:
    """A ``--model`` generator (``user_module.build_user_module``), its ``Source`` and a default
    export name."""
    user = build_user_module(spec, weights, random_weights)
    source = Source(
        kind="user_model",
        path=user.spec,
        sha256=user.sha256,
        weights=user.weights,
        model_config={
            "latent_dim": latent_dim,
            "num_classes": num_classes,
            "image_shape": list(image_shape),
        },
        random_weights=random_weights,
    )
    return user.module, source, user.default_name


def load_eager(manifest: Manifest) -> nn.Module:
    """Rebuild the exact eager generator an export was made from (eval mode, CPU)."""
    src = manifest.source
    if manifest.image is not None and src.kind != "checkpoint":
        return image_eager(manifest)
    if src.kind == "checkpoint":
        if not Path(src.path).is_file():
            raise ExportError(f"the checkpoint of export {manifest.name!r} is gone: {src.path}")
        if sha256_file(src.path) != src.sha256:
            raise ExportError(
                f"{src.path} changed since export {manifest.name!r}; re-export with --force"
            )
        return load_generator(src.path)[0]
    if src.kind == "user_model":
        shape = manifest.image_shape
        module, source, _ = build_user_model(
            src.path,
            src.weights or None,
            manifest.latent_dim,
            manifest.num_classes,
            (shape[0], shape[1], shape[2]),
            random_weights=src.random_weights,
        )
        if source.sha256 != src.sha256:
            raise ExportError(
                f"the model file or weights of export {manifest.name!r} changed since export; "
                "re-export with --force"
            )
        return serving_module(module, manifest.interface, manifest.num_classes)
    if src.kind == "in_memory":
        raise ExportError(
            f"export {manifest.name!r} was made from a module in memory ({src.path}); rebuild it "
            "yourself, or export with --model FILE.py:Class to make it loadable"
        )
    raise ExportError(f"export {manifest.name!r} has an unknown source kind {src.kind!r}")


_RECORDABLE = (bool, int, float, str, type(None))  # what the manifest's JSON can hold


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
        default_name=default_name or snake(cls.__name__),
        interface=interface,
    )


def _label(source: Source | None, cls: type) -> str:
    """How messages name the model: ``--model file.py:Class`` when it came from the CLI."""
    if source is not None and source.kind == "user_model":
        return f"--model {source.path}"
    return cls.__name__


def output_spec(image_shape: tuple[int, int, int], uint8: bool) -> TensorSpec:
    c, h, w = image_shape
    if uint8:
        return TensorSpec("images", "uint8", [-1, h, w, c], layout="NHWC", value_range=[0, 255])
    return TensorSpec("images", "float32", [-1, c, h, w], layout="NCHW", value_range=[-1, 1])


def make_artifact(loaded: LoadedModel, variant: Variant, path: str | None = None) -> Artifact:
    """The artifact of ``variant`` for this model (at ``path``, default the variant's file)."""
    if loaded.image is not None:
        image_in, image_out = image_specs(loaded.image.in_channels, loaded.image.out_channels)
        file = path or variant.file
        return Artifact(variant.name, variant.kind, file, variant.precision, [image_in], image_out)
    return Artifact(
        name=variant.name,
        kind=variant.kind,
        path=path or variant.file,
        precision=variant.precision,
        inputs=loaded.interface.input_specs(loaded.latent_dim, loaded.num_classes),
        output=output_spec(loaded.image_shape, uint8=variant.head is OutputKind.uint8),
    )
