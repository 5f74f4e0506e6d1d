"""Where an image-to-image model comes from, and the module every later step runs.

Three sources, each ending in a ``LoadedModel`` with ``image`` set (``ImageFacts``, probed):

- a checkpoint of ``gendeploy train --preset digits-sr4x`` (``source.load_checkpoint_model``
  hands it here);
- a published ``.safetensors`` / ``.pth`` state dict, read without running code from the file
  (``archs.load_image_model``: RRDBNet, SRVGGNetCompact, pix2pix U-Net, CycleGAN ResNet, anything
  else through spandrel where it imports);
- a ``--model file.py:factory`` (``gendeploy.archs.esrgan:rrdbnet_tiny`` and the like) with its
  weights, or a module in memory.

Every artifact takes and returns float images in [-1, 1], whatever the model's own pixel range:
``PixelRange`` maps [-1, 1] to a [0, 1] model (BasicSR's RRDBNet and SRVGGNetCompact) and back
inside the graph, so the gate, the tiler and the served model render one way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from gendeploy.archs.load import load_image_model
from gendeploy.errors import ExportError, UsageError
from gendeploy.export.image_probe import in_channels_of, measure_reach, probe_size
from gendeploy.export.loaded import ImageFacts, LoadedModel
from gendeploy.export.options import ModelSpec
from gendeploy.export.user_module import build_user_module, module_digest, snake
from gendeploy.manifest import Manifest, Source, sha256_file

UNIT_RANGE = (-1.0, 1.0)
Say = Callable[[str], None]


class PixelRange(nn.Module):
    """``model`` with images in [-1, 1] in and out, whatever its own pixel range."""

    def __init__(self, model: nn.Module, value_range: tuple[float, float]) -> None:
        super().__init__()
        self.model = model
        self.lo, self.hi = float(value_range[0]), float(value_range[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        half = (self.hi - self.lo) / 2
        out: torch.Tensor = self.model((images + 1) * half + self.lo)
        return (out - self.lo) / half - 1


def in_unit_range(module: nn.Module, value_range: tuple[float, float]) -> nn.Module:
    """The module itself for a [-1, 1] model, else wrapped in ``PixelRange``."""
    if tuple(value_range) == UNIT_RANGE:
        return module.eval()
    return PixelRange(module.eval(), value_range).eval()


def probe_image_model(
    module: nn.Module,
    *,
    arch: str,
    value_range: tuple[float, float],
    source: Source,
    default_name: str,
    loaded_by: str,
    in_channels: int | None = None,
    scale: int | None = None,
    label: str = "the model",
    say: Say | None = None,
    test_set: str = "synthetic",
    input_blur: float = 0.0,
) -> LoadedModel:
    """Probe ``module`` (scale, sizes, receptive field) and describe it for export; ``test_set``:
    what the gate runs it on (``ImageFacts``)."""
    served = in_unit_range(module, value_range)
    channels = in_channels or in_channels_of(module) or 3
    found, out_channels, multiple, min_side = probe_size(served, channels, label)
    if scale is not None and scale != found:
        raise UsageError(f"--scale {scale}: {label} returns images {found} x its input's size")
    reach = measure_reach(served, channels, found, multiple)
    if say is not None:
        field = f"{reach} px" if reach is not None else "beyond the probe"
        say(
            f"{label}: x{found}, {channels} -> {out_channels} channels, sides multiples of "
            f"{multiple} from {min_side}, receptive field {field}"
        )
    facts = ImageFacts(
        arch=arch,
        scale=found,
        in_channels=channels,
        out_channels=out_channels,
        size_multiple=multiple,
        min_side=min_side,
        value_range=(float(value_range[0]), float(value_range[1])),
        receptive_field=reach,
        loaded_by=loaded_by,
        test_set=test_set,
        input_blur=input_blur,
    )
    return LoadedModel(
        module=served,
        latent_dim=0,
        num_classes=0,
        image_shape=(out_channels, -1, -1),
        source=source,
        default_name=default_name,
        image=facts,
    )


def load_published(path: Path, say: Say | None = None) -> LoadedModel:
    """A published ``.safetensors`` / ``.pth`` state dict (``archs.load_image_model``)."""
    path = path.resolve()
    found = load_image_model(path)
    source = Source(
        kind="image_checkpoint",
        path=str(path),
        sha256=sha256_file(path),
        model_config={"arch": found.arch, "scale": found.scale, "loaded_by": found.loaded_by},
    )
    return probe_image_model(
        found.module,
        arch=found.arch,
        value_range=found.value_range,
        source=source,
        default_name=path.stem,
        loaded_by=found.loaded_by,
        in_channels=found.in_channels,
        label=path.name,
        say=say,
    )


def load_image_spec(spec: ModelSpec, say: Say | None = None) -> LoadedModel:
    """An image-to-image ``--model`` (with its weights) or module in memory."""
    if spec.module is not None:
        module, source = spec.module, spec.source
        if not isinstance(module, nn.Module):
            raise UsageError(f"export_generator needs an nn.Module, got {type(module).__name__}")
        cls = type(module)
        source = source or Source(
            kind="in_memory",
            path=f"{cls.__module__}:{cls.__qualname__}",
            sha256=module_digest(module),
            model_config={"image_to_image": True},
        )
        name, label, loaded_by = snake(cls.__name__), cls.__name__, "module"
    else:
        assert spec.model is not None
        user = build_user_module(spec.model, spec.weights, spec.random_weights)
        module, name, label, loaded_by = user.module, user.default_name, spec.model, "--model"
        source = Source(
            kind="user_model",
            path=user.spec,
            sha256=user.sha256,
            weights=user.weights,
            model_config=_image_flags(spec),
            random_weights=spec.random_weights,
        )
    own = getattr(module, "value_range", UNIT_RANGE)
    value_range = spec.value_range or (float(own[0]), float(own[1]))
    return probe_image_model(
        module,
        arch=type(module).__name__,
        value_range=value_range,
        source=source,
        default_name=name,
        loaded_by=loaded_by,
        in_channels=spec.in_channels,
        scale=spec.scale,
        label=f"--model {label}" if loaded_by == "--model" else label,
        say=say,
    )


def _image_flags(spec: ModelSpec) -> dict[str, object]:
    """What a ``--model`` export records to be rebuilt from (``image_eager``)."""
    flags: dict[str, object] = {"image_to_image": True}
    if spec.in_channels is not None:
        flags["in_channels"] = spec.in_channels
    if spec.value_range is not None:
        flags["value_range"] = list(spec.value_range)
    return flags


def image_eager(manifest: Manifest) -> nn.Module:
    """The eager module an image-to-image export was made from ([-1, 1] in and out), rebuilt
    from its source and checked to be the same."""
    src, image = manifest.source, manifest.image
    assert image is not None
    value_range = (image.value_range[0], image.value_range[1])
    if src.kind == "image_checkpoint":
        if not Path(src.path).is_file() or sha256_file(src.path) != src.sha256:
            raise ExportError(
                f"{src.path} of export {manifest.name!r} is gone or changed since export; "
                "re-export with --force"
            )
        return in_unit_range(load_image_model(src.path).module, value_range)
    if src.kind == "user_model":
        user = build_user_module(src.path, src.weights or None, src.random_weights)
        if user.sha256 != src.sha256:
            raise ExportError(
                f"the model file or weights of export {manifest.name!r} changed since export; "
                "re-export with --force"
            )
        return in_unit_range(user.module, value_range)
    raise ExportError(
        f"export {manifest.name!r} was made from a {src.kind} source ({src.path}) that gendeploy "
        "cannot rebuild; export it with --model FILE.py:factory to make it loadable"
    )
