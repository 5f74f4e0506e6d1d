"""A model loaded for export: the module and the facts every later step needs (``LoadedModel``);
for an image-to-image model, what its probe found (``ImageFacts``)."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from gendeploy.manifest import Interface, Source


@dataclass(frozen=True)
class ImageFacts:
    """An image-to-image model as probed (``image_probe.py``): ``(N, in_channels, H, W)`` in
    [-1, 1] (its own ``value_range`` mapped inside the module), ``(N, out_channels, scale*H,
    scale*W)`` out."""

    arch: str
    scale: int
    in_channels: int
    out_channels: int
    size_multiple: int
    min_side: int
    value_range: tuple[float, float]  # the model's own pixel range
    receptive_field: int | None  # input pixels each side; None: beyond the probe
    loaded_by: str  # "checkpoint", "gendeploy.archs", "spandrel", "--model"
    # what the gate and the INT8 calibration run it on: "synthetic" (gendeploy.testimages) or
    # "digits" (held-out scans, defocused by ``input_blur`` as the digits-sr4x trainer does)
    test_set: str = "synthetic"
    input_blur: float = 0.0


@dataclass
class LoadedModel:
    module: nn.Module
    latent_dim: int  # 0 for an image-to-image model
    num_classes: int
    image_shape: tuple[int, int, int]  # the output's (C, H, W); -1 where H and W are dynamic
    source: Source
    default_name: str
    interface: Interface = field(default_factory=Interface)  # served inputs beyond z, labels
    image: ImageFacts | None = None  # an image-to-image model

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0
