"""Datasets, all loaded into memory as (images in [-1, 1] (N, C, S, S) float32, labels int64 (N,)).

``digits`` (the default) is scikit-learn's 8x8 digits, shipped inside scikit-learn: no download.
``mnist`` / ``fashion-mnist`` read local IDX files, ``cifar10`` the local python batches (through a
restricted unpickler that builds numpy arrays and nothing else), ``folder`` an image folder with one
subfolder per class, ``fake`` random tensors for smoke tests.
"""

from __future__ import annotations

import gzip
import io
import math
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F

from gendeploy.errors import DataError
from gendeploy.trainer.config import DatasetName

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


@dataclass(frozen=True)
class ImageData:
    images: torch.Tensor  # (N, C, S, S) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64
    num_classes: int
    class_names: list[str]


def load_dataset(
    name: DatasetName | str,
    image_size: int,
    channels: int,
    path: Path | None = None,
    split: str = "train",
) -> ImageData:
    """Load ``name`` resized to ``channels`` x ``image_size`` x ``image_size``."""
    name = DatasetName(name)
    if name is DatasetName.fake:
        g = torch.Generator().manual_seed(0)
        images = torch.rand(256, channels, image_size, image_size, generator=g) * 2 - 1
        labels = torch.randint(0, 10, (256,), generator=g)
        return ImageData(images, labels, 10, [str(i) for i in range(10)])
    raw, labels_np, names = _source_images(name, path, split)
    images = _to_model_range(raw, image_size, channels)
    return ImageData(images, torch.from_numpy(labels_np.astype(np.int64)), len(names), names)


@dataclass(frozen=True)
class ImagePairs:
    """What a super-resolution model learns from: ``low`` in, ``high`` out, the same images."""

    low: torch.Tensor  # (N, C, S/scale, S/scale) float32 in [-1, 1]
    high: torch.Tensor  # (N, C, S, S) float32 in [-1, 1]
    labels: torch.Tensor  # (N,) int64: what the digits classifier should read


def load_pairs(
    name: DatasetName | str,
    image_size: int,
    scale: int,
    channels: int,
    path: Path | None = None,
    split: str = "train",
    blur: float = 0.0,
    low_channels: int | None = None,
) -> ImagePairs:
    """(low, high) pairs: each source image through the same resize as ``load_dataset``, once to
    ``image_size // scale`` and once to ``image_size``. For ``digits`` the low side is the 8x8 scan
    itself (no resize at all) and the high side the trainer's 32x32 (bilinear, half-pixel
    centres, as every digits model here trains on), so the two stay aligned pixel for pixel.
    ``blur`` > 0 then defocuses the low side: a Gaussian of that sigma, in low-side pixels.
    ``low_channels`` (default ``channels``): the low side's, for a model that also converts."""
    name = DatasetName(name)
    low_size, low_channels = image_size // scale, low_channels or channels
    if name is DatasetName.fake:  # random high images, their low side by the same resize
        data = load_dataset(name, image_size, channels)
        high, labels = data.images, data.labels
        low = _resize(high, low_size)
        if low_channels != channels:
            low = low.mean(dim=1, keepdim=True).expand(-1, low_channels, -1, -1).contiguous()
    else:
        raw, labels_np, _ = _source_images(name, path, split)
        high = _to_model_range(raw, image_size, channels)
        low = _to_model_range(raw, low_size, low_channels)
        labels = torch.from_numpy(labels_np.astype(np.int64))
    return ImagePairs(gaussian_blur(low, blur), high, labels)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (N, C, H, W) images, edges replicated; sigma 0: unchanged."""
    if sigma <= 0:
        return images
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    kernel = torch.exp(-(t**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(images)
    c = images.shape[1]
    x = F.pad(images, (radius,) * 4, mode="replicate")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def bicubic(images: torch.Tensor, scale: int) -> torch.Tensor:
    """The baseline every upscaler here is judged against: bicubic x ``scale`` (half-pixel
    centres, like the trainer's resize), clamped to [-1, 1]."""
    up = F.interpolate(images, scale_factor=float(scale), mode="bicubic", align_corners=False)
    return up.clamp(-1, 1)


def _resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """[-1, 1] images to ``size`` by ``_to_model_range``'s interpolation."""
    x = (images + 1) / 2
    x = F.interpolate(
        x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size
    )
    return (x.clamp(0, 1) * 2 - 1).contiguous()


def _source_images(
    name: DatasetName, path: Path | None, split: str
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """A real dataset's images at their own size, uint8 range (N, C, H, W), checked."""
    if name is DatasetName.digits:
        raw, labels_np, names = _digits(split)
    elif name in (DatasetName.mnist, DatasetName.fashion_mnist):
        raw, labels_np = _idx_pair(_require_path(name, path), train=split == "train")
        names = [str(i) for i in range(10)]
    elif name is DatasetName.cifar10:
        raw, labels_np = _cifar10(_require_path(name, path), train=split == "train")
        names = ["airplane", "automobile", "bird", "cat", "deer"]
        names += ["dog", "frog", "horse", "ship", "truck"]
    else:
        raw, labels_np, names = _folder(_require_path(name, path))
    where = f"dataset {name.value!r} in {path}"
    if len(raw) == 0:
        raise DataError(f"{where} holds no images; expected {EXPECTED[name]}")
    if labels_np.min() < 0 or labels_np.max() >= len(names):
        bad = labels_np[(labels_np < 0) | (labels_np >= len(names))][0]
        raise DataError(f"{where} has label {bad}, outside 0..{len(names) - 1}")
    return raw, labels_np, names


EXPECTED = {
    DatasetName.mnist: "a directory with train-images-idx3-ubyte and train-labels-idx1-ubyte "
    "(optionally .gz, and the t10k- pair)",
    DatasetName.cifar10: "a directory with CIFAR-10's python batches (data_batch_1..5, "
    "test_batch), or the cifar-10-batches-py directory above them",
    DatasetName.folder: "a directory with one subdirectory of images per class",
}
EXPECTED[DatasetName.fashion_mnist] = EXPECTED[DatasetName.mnist]


def _require_path(name: DatasetName, path: Path | None) -> Path:
    if path is None:
        raise DataError(f"dataset {name.value!r} reads local files: pass --data-path DIR")
    if not path.is_dir():
        state = "is not a directory" if path.exists() else "does not exist"
        raise DataError(f"dataset {name.value!r}: {path} {state}; expected {EXPECTED[name]}")
    return path


def _to_model_range(raw: np.ndarray, size: int, channels: int) -> torch.Tensor:
    """uint8-range (N, C, H, W) array -> float (N, channels, size, size) in [-1, 1]."""
    x = torch.from_numpy(raw.astype(np.float32) / 255.0)
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True) if channels == 1 else x.expand(-1, 3, -1, -1)
    if x.shape[-1] != size:
        x = F.interpolate(
            x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size
        )
    return (x.clamp(0, 1) * 2 - 1).contiguous()


def digits_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (N, 8, 8) float in [0, 1] and labels, split 80/20 deterministically
    (stratified by class) into "train" and "test"; "all" returns every image."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = data.images.astype(np.float32) / 16.0
    labels = data.target.astype(np.int64)
    if split == "all":
        return images, labels
    rng = np.random.default_rng(1234)
    test = np.zeros(len(labels), dtype=bool)
    for k in range(10):
        idx = np.flatnonzero(labels == k)
        test[rng.choice(idx, size=len(idx) // 5, replace=False)] = True
    keep = test if split == "test" else ~test
    return images[keep], labels[keep]


def _digits(split: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
    images, labels = digits_split(split)
    return (images[:, None] * 255.0), labels, [str(i) for i in range(10)]


def _open_maybe_gz(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def _find(root: Path, stems: list[str]) -> Path:
    for stem in stems:
        for candidate in (root / stem, root / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    raise DataError(f"no {stems[0]}[.gz] in {root}: expected the standard IDX file names there")


def _idx_pair(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    prefix = "train" if train else "t10k"
    images_path = _find(root, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"])
    labels_path = _find(root, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"])
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)}"
        )
    return images[:, None], labels


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """Parse an unsigned-byte IDX file (magic 0x00000800 + ndim) with full size checks."""
    try:
        data = _open_maybe_gz(path)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DataError(f"cannot read {path}: {e}") from None
    header = 4 + 4 * ndim
    if len(data) < header or data[:3] != b"\x00\x00\x08" or data[3] != ndim:
        raise DataError(f"{path} is not a {ndim}-d unsigned-byte IDX file (bad magic number)")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(data) != header + int(np.prod(dims)):
        raise DataError(f"{path} is truncated or padded: header says {dims}, size {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


class _ArraysOnly(pickle.Unpickler):
    """Unpickles CIFAR batches (dicts, lists, bytes, numpy arrays); refuses any other class."""

    ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> object:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _cifar10(root: Path, train: bool) -> tuple[np.ndarray, np.ndarray]:
    if (root / "cifar-10-batches-py").is_dir():
        root = root / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    images, labels = [], []
    for name in names:
        path = root / name
        if not path.is_file():
            raise DataError(f"cifar10: {path} is missing (expected the python-version batches)")
        try:
            batch = _ArraysOnly(io.BytesIO(path.read_bytes()), encoding="bytes").load()
            data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
            batch_labels = np.asarray(batch[b"labels"], dtype=np.int64).reshape(-1)
        except (pickle.UnpicklingError, KeyError, ValueError, TypeError, EOFError) as e:
            raise DataError(f"cifar10: {path} is not a CIFAR-10 python batch ({e})") from None
        if len(data) != len(batch_labels):
            raise DataError(
                f"cifar10: {path} has {len(data)} images but {len(batch_labels)} labels"
            )
        images.append(data)
        labels.append(batch_labels)
    return np.concatenate(images), np.concatenate(labels)


def _folder(root: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from PIL import Image, UnidentifiedImageError

    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise DataError(f"{root} has no class subfolders: expected {root}/<class>/<image>.png")
    images, labels = [], []
    for k, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            try:
                with Image.open(path) as im:
                    rgb = np.asarray(im.convert("RGB").resize((64, 64)), dtype=np.uint8)
            except (UnidentifiedImageError, OSError) as e:
                raise DataError(f"{path} is not a readable image ({e})") from None
            images.append(rgb.transpose(2, 0, 1))
            labels.append(k)
    if not images:
        raise DataError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}/<class>/")
    return np.stack(images), np.asarray(labels), classes
