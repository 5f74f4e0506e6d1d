"""``gendeploy upscale``: send an image file to a served image-to-image model, write the result.

The file goes as it is (``image_bytes``: the server decodes PNG or JPEG) or, with ``send=pixels``,
decoded here and sent as ``image`` (UINT8 [1, H, W, C]); the server tiles it, so any size up to
its megapixel limit runs. The result is written atomically: nothing at ``out`` unless it is whole.

``upscale_local`` runs an export's ONNX here instead (``--export``): the same tiling, any size,
memory bounded by the output plus one batch of windows, a progress bar on a terminal.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from gendeploy.errors import ServeError, UsageError
from gendeploy.fileio import atomic_write
from gendeploy.manifest import INPUT_IMAGES, load_manifest
from gendeploy.runtime.onnxrt import OnnxRuntimeRunner
from gendeploy.runtime.triton import TritonRunner
from gendeploy.serve.client import served_config
from gendeploy.tiling import upscale

IMAGE_INPUT, IMAGE_BYTES_INPUT, IMAGE_OUTPUT = "image", "image_bytes", "images"  # repo's
WRITABLE = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
MODES = {1: "L", 3: "RGB", 4: "RGBA"}


class Send(str, Enum):
    bytes = "bytes"  # the file as it is: the server decodes it
    pixels = "pixels"  # decoded here: UINT8 HWC


@dataclass(frozen=True)
class Upscaled:
    model: str
    scale: int
    size_in: tuple[int, int]  # width, height
    size_out: tuple[int, int]


def upscale_file(
    source: Path,
    out: Path,
    url: str,
    model: str | None = None,
    protocol: str = "http",
    send: Send = Send.bytes,
    served_models: list[str] | None = None,
    timeout_s: float = 600.0,
) -> Upscaled:
    """``source`` through the served model ``model`` (default: the only one), written to ``out``
    (its suffix picks the format)."""
    fmt = WRITABLE.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(f"-o {out}: write .png, .jpg or .webp")
    try:
        data = source.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {source}: {e.strerror or e}") from None
    name, _config, params = served_config(url, model, protocol, served_models)
    if "scale" not in params:
        raise UsageError(f"model {name!r} is a generator, not image-to-image: use `generate`")
    channels = int(params["in_channels"])
    if send is Send.pixels:
        feeds = {IMAGE_INPUT: _decode(source, data, channels)[None]}
    else:
        feeds = {IMAGE_BYTES_INPUT: np.array([[data]], dtype=np.object_)}
    with TritonRunner(url, name, protocol, output=IMAGE_OUTPUT, timeout_s=timeout_s) as runner:
        result = runner.run(feeds)
    if result.ndim != 4 or result.dtype != np.uint8:
        raise ServeError(f"model {name!r} returned {result.dtype}{list(result.shape)}, not images")
    image = result[0]
    _write(out, image, fmt)
    scale = int(params["scale"])
    h, w = image.shape[:2]
    return Upscaled(name, scale, (w // scale, h // scale), (w, h))


def upscale_local(
    source: Path,
    out: Path,
    export_dir: Path,
    artifact: str = "fp32",
    threads: int | None = None,
    batch: int = 4,
) -> Upscaled:
    """``source`` through an image export's ONNX ``artifact`` (ONNX Runtime, here), tiled as its
    manifest says, written to ``out``."""
    fmt = WRITABLE.get(out.suffix.lower())
    if fmt is None:
        raise UsageError(f"-o {out}: write .png, .jpg or .webp")
    manifest = load_manifest(export_dir)
    image = manifest.image
    if image is None:
        raise UsageError(f"{export_dir} is a generator export, not image-to-image")
    try:
        data = source.read_bytes()
    except OSError as e:
        raise UsageError(f"cannot read {source}: {e.strerror or e}") from None
    pixels = _decode(source, data, image.in_channels)
    geometry = image.geometry()
    refused = geometry.refusal(*pixels.shape[:2])
    if refused:
        raise UsageError(refused)
    path = export_dir / manifest.artifact(artifact).path
    with OnnxRuntimeRunner(path, threads=threads) as runner, _progress("tiles") as progress:
        result = upscale(
            pixels,
            lambda x: runner.run({INPUT_IMAGES: x}),
            geometry,
            batch=batch,
            progress=progress,
        )
    _write(out, result, fmt)
    h, w = result.shape[:2]
    return Upscaled(manifest.name, image.scale, (pixels.shape[1], pixels.shape[0]), (w, h))


@contextlib.contextmanager
def _progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar of windows done on stderr (nothing when stderr is no terminal)."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    console = Console(stderr=True)
    if not console.is_terminal:
        yield lambda done, total: None
        return
    with Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), console=console,
                  transient=True) as bar:  # fmt: skip
        task = bar.add_task(label, total=None)

        def advance(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield advance


def _decode(source: Path, data: bytes, channels: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if channels not in MODES:
        raise UsageError(f"the model takes {channels} channels: send the file as --send bytes")
    try:
        with Image.open(io.BytesIO(data)) as opened:
            pixels = np.asarray(opened.convert(MODES[channels]))
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise UsageError(f"{source} is not an image Pillow can read ({e})") from None
    return pixels.reshape(pixels.shape[0], pixels.shape[1], channels)


def _write(out: Path, image: np.ndarray, fmt: str) -> None:
    from PIL import Image

    pixels = image[..., 0] if image.shape[-1] == 1 else image
    picture = Image.fromarray(np.ascontiguousarray(pixels))
    if fmt == "JPEG" and picture.mode == "RGBA":
        picture = picture.convert("RGB")
    atomic_write(out, lambda f: picture.save(f, format=fmt))
