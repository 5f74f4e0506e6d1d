"""Datasets (real files, malformed files) and the digits quality metric."""

from __future__ import annotations

import gzip
import pickle
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from gendeploy.errors import DataError, UsageError
from gendeploy.trainer.config import ModelConfig
from gendeploy.trainer.data import digits_split, load_dataset
from gendeploy.trainer.quality import COVERAGE_SHARE, evaluate_generator


def _write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


def test_digits_are_the_default_and_split_without_overlap() -> None:
    data = load_dataset("digits", 32, 1)
    assert data.images.shape[1:] == (1, 32, 32) and data.num_classes == 10
    assert -1 <= data.images.min() < data.images.max() <= 1
    train_x, _ = digits_split("train")
    test_x, _ = digits_split("test")
    assert len(train_x) + len(test_x) == 1797
    train_rows = {x.tobytes() for x in train_x}
    assert sum(x.tobytes() in train_rows for x in test_x) < 10  # only true duplicates in the data


def test_mnist_idx_files_load_gzipped_or_not(tmp_path: Path) -> None:
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28))
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images, compress=True)
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 9]))
    data = load_dataset("mnist", 32, 1, tmp_path)
    assert data.images.shape == (5, 1, 32, 32)
    assert data.labels.tolist() == [0, 1, 2, 3, 9]


def test_malformed_idx_files_get_a_clear_error(tmp_path: Path) -> None:
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((5, 28, 28)))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(DataError, match="truncated or padded"):
        load_dataset("fashion-mnist", 32, 1, tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"not an idx file")
    with pytest.raises(DataError, match="bad magic number"):
        load_dataset("mnist", 32, 1, tmp_path)
    with pytest.raises(DataError, match="expected the standard IDX file names"):
        load_dataset("mnist", 32, 1, tmp_path / "..")


def test_well_formed_files_with_bad_contents_get_a_clear_error(tmp_path: Path) -> None:
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((0, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros((0,)))
    with pytest.raises(DataError, match="holds no images; expected a directory with train-images"):
        load_dataset("mnist", 32, 1, tmp_path)
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((4, 28, 28)))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([1, 2, 200, 3]))
    with pytest.raises(DataError, match=r"has label 200, outside 0\.\.9"):
        load_dataset("mnist", 32, 1, tmp_path)
    with pytest.raises(DataError, match="is not a directory; expected a directory with one"):
        load_dataset("folder", 32, 3, tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(DataError, match="does not exist; expected a directory with CIFAR-10"):
        load_dataset("cifar10", 32, 3, tmp_path / "missing")


def test_cifar10_batches_load_and_foreign_pickles_are_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(1, 6):
        batch = {b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), b"labels": [0, 1, 2, 3]}
        (tmp_path / f"data_batch_{i}").write_bytes(pickle.dumps(batch))
    data = load_dataset("cifar10", 32, 3, tmp_path)
    assert data.images.shape == (20, 3, 32, 32) and data.num_classes == 10
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": Path("/etc")}))
    with pytest.raises(DataError, match="not a CIFAR-10 python batch"):
        load_dataset("cifar10", 32, 3, tmp_path)
    images = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
    for labels, message in (([0, 1, 2], "has 4 images but 3 labels"), ([0, 1, 57, 3], "label 57")):
        batch = {b"data": images, b"labels": labels}
        (tmp_path / "data_batch_3").write_bytes(pickle.dumps(batch))
        with pytest.raises(DataError, match=message):
            load_dataset("cifar10", 32, 3, tmp_path)


def test_image_folder_uses_subfolders_as_labels(tmp_path: Path) -> None:
    for k, name in enumerate(["cats", "dogs"]):
        (tmp_path / name).mkdir()
        for i in range(3):
            Image.new("RGB", (40, 30), (k * 200, i * 50, 0)).save(tmp_path / name / f"{i}.png")
    data = load_dataset("folder", 32, 3, tmp_path)
    assert data.class_names == ["cats", "dogs"]
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.images.shape == (6, 3, 32, 32)
    (tmp_path / "dogs" / "broken.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="not a readable image"):
        load_dataset("folder", 32, 3, tmp_path)
    with pytest.raises(DataError, match="no class subfolders"):
        load_dataset("folder", 32, 3, tmp_path / "cats")


class _Replay(nn.Module):
    """A stand-in generator that returns real digits (of the asked label when conditional)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        super().__init__()
        self.images, self.labels = images, labels
        self.rng = torch.Generator().manual_seed(0)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            idx = torch.randint(0, len(self.images), (len(z),), generator=self.rng)
        else:
            idx = torch.empty(len(labels), dtype=torch.long)
            for y in labels.unique():
                pool = torch.nonzero(self.labels == y)[:, 0]
                where = labels == y
                pick = torch.randint(0, len(pool), (int(where.sum()),), generator=self.rng)
                idx[where] = pool[pick]
        return self.images[idx]


def test_quality_metric_scores_real_digits_high_and_noise_low() -> None:
    real = load_dataset("digits", 32, 1)
    config = ModelConfig(latent_dim=8, num_classes=10, image_size=32)
    good = evaluate_generator(_Replay(real.images, real.labels), config)
    assert good.classifier_accuracy >= 0.97
    assert good.label_accuracy is not None and good.label_accuracy >= 0.97
    # Real digits drawn with replacement clear the issue's own bar (<= 2x the baseline).
    assert good.classes_covered == 10 and good.frechet_ratio < 2.0

    unconditional = replace(config, num_classes=0)
    noise = torch.rand_like(real.images) * 2 - 1
    bad = evaluate_generator(_Replay(noise, real.labels), unconditional)
    assert bad.label_accuracy is None
    assert bad.frechet_ratio > 10
    assert bad.classes_covered < 10 or max(bad.class_shares) > 3 * COVERAGE_SHARE

    one = real.images[real.labels == 3][:1]
    collapsed = evaluate_generator(_Replay(one, real.labels), unconditional)
    assert collapsed.classes_covered == 1 and collapsed.frechet_ratio > 5


def test_a_conditional_model_without_ten_classes_is_not_scored_on_digits() -> None:
    real = load_dataset("digits", 32, 1)
    config = ModelConfig(latent_dim=8, num_classes=2, image_size=32)
    with pytest.raises(UsageError, match="has 2 classes; score unconditional or 10-class"):
        evaluate_generator(_Replay(real.images, real.labels), config)


class _TrainSet(nn.Module):
    """Returns the training images themselves, in order: a generator that is the train split."""

    def __init__(self, images: torch.Tensor) -> None:
        super().__init__()
        self.images, self.served = images, 0

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        self.served += len(z)
        return self.images[self.served - len(z) : self.served]


@pytest.mark.parametrize(("size", "channels"), [(32, 1), (64, 3)])
def test_the_train_split_itself_scores_its_own_baseline(size: int, channels: int) -> None:
    """Real and generated digits go through the same resizing, whatever the model's resolution:
    a generator that returns the train split scores (nearly) exactly the train-vs-held-out
    baseline. Scoring the 8x8 scans upsampled directly put this at 1.42x."""
    config = ModelConfig(latent_dim=8, image_size=size, image_channels=channels)
    real = load_dataset("digits", size, channels)
    report = evaluate_generator(_TrainSet(real.images), config)
    assert report.frechet_ratio == pytest.approx(1.0, abs=0.02)


def test_the_classifier_is_the_same_whatever_the_thread_count() -> None:
    from gendeploy.trainer.quality import train_classifier

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        two = train_classifier(epochs=1).state_dict()
        torch.set_num_threads(1)
        one = train_classifier(epochs=1).state_dict()
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(two[k], one[k]) for k in one)  # the cached scores depend on it
