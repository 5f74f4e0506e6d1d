"""Sample quality on digits: a small classifier, trained deterministically and cached, scores
generated images by label accuracy (conditional), class coverage (unconditional) and a Frechet
distance in its feature space, next to the real-train vs real-held-out baseline. Upscalers are
scored on the held-out digits beside bicubic: PSNR and SSIM to the target, and how often the
classifier reads the upscaled digit right (``UpscaleReport``).

Real digits are scored exactly as the generator saw them: resized to the model's resolution by
the trainer's own loader, then brought to the classifier's 16x16 like generated images. Scoring
8x8 scans upsampled straight to 16x16 instead would charge the generator for the resize: the
training set itself scored 1.42x its own baseline that way.
"""

from __future__ import annotations

import hashlib
import inspect
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gendeploy.errors import UsageError
from gendeploy.fileio import atomic_write, cache_dir
from gendeploy.trainer.config import DatasetName, ModelConfig
from gendeploy.trainer.data import bicubic, digits_split, load_dataset, load_pairs

CLASSIFIER_SIZE = 16  # generated images are resized to 16x16 grey before classification
COVERAGE_SHARE = 0.05  # a class is covered when it holds at least 5% of unconditional samples


class DigitsClassifier(nn.Module):
    def __init__(self, features: int = 64) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            # state: 32 x 8 x 8
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            # state: 64 x 4 x 4
            nn.Flatten(),
            nn.Linear(64 * 16, features),
            nn.ReLU(),
            # state: features (the Frechet feature space)
        )
        self.classify = nn.Linear(features, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def to_classifier_input(images: torch.Tensor) -> torch.Tensor:
    """Any (N, C, H, W) images in [-1, 1] -> (N, 1, 16, 16) grey in [-1, 1]."""
    x = images.float().mean(dim=1, keepdim=True)
    if x.shape[-1] != CLASSIFIER_SIZE:
        down = x.shape[-1] > CLASSIFIER_SIZE
        x = F.interpolate(x, size=(CLASSIFIER_SIZE,) * 2, mode="bilinear", antialias=down)
    return x


def _real_digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The classifier's training data: the 8x8 scans, upsampled to its input size."""
    images, labels = digits_split(split)
    x = torch.from_numpy(images)[:, None] * 2 - 1
    return to_classifier_input(x), torch.from_numpy(labels)


def _reference_digits(split: str, config: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Real digits as a generator of ``config`` was trained on them, at the classifier's size."""
    data = load_dataset(DatasetName.digits, config.image_size, config.image_channels, split=split)
    return to_classifier_input(data.images), data.labels


def _cache_path() -> Path:
    root = cache_dir()
    # The cache key changes whenever the classifier's code or training recipe changes.
    source = "".join(
        inspect.getsource(f) for f in (DigitsClassifier, train_classifier, _train_classifier)
    )
    key = hashlib.sha256(source.encode()).hexdigest()[:12]
    return root / f"digits_classifier_{key}.pt"


def train_classifier(epochs: int = 20, seed: int = 0) -> nn.Module:
    """Train on the real train split with small random shifts (generated digits are never pixel-
    aligned like the scans); deterministic for a given seed on one machine.

    Trained on one thread: with two, the sums come out in another order, and the cached classifier
    (hence every score) depended on the thread count of whichever process trained it first: 98.59%
    held-out accuracy and a 3.924 baseline with one thread, 98.87% and 3.926 with two."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_classifier(epochs, seed)
    finally:
        torch.set_num_threads(threads)


def _train_classifier(epochs: int, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = DigitsClassifier()
    x, y = _real_digits("train")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 64):
            idx = order[i : i + 64]
            shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
            xb = torch.roll(x[idx], shifts=(shift[0], shift[1]), dims=(2, 3))
            loss = F.cross_entropy(model(xb), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


def load_classifier() -> nn.Module:
    """The cached classifier (trained on first use, ~15 s)."""
    path = _cache_path()
    model = DigitsClassifier()
    if path.is_file():
        payload = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(payload["state"])
        return model.eval()
    trained = train_classifier()
    payload = {"state": trained.state_dict()}
    atomic_write(path, lambda f: torch.save(payload, f))
    return trained


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to feature sets ``a`` and ``b`` (rows: samples)"""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        # Dead ReLU features make the covariances singular; sqrtm still converges (as in
        # pytorch-fid, a small diagonal offset is added only when it does not).
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(cov_a @ cov_b)
        if not np.isfinite(covmean).all():
            offset = np.eye(len(cov_a)) * 1e-6
            covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * covmean))


@dataclass(frozen=True)
class QualityReport:
    classifier_accuracy: float  # the classifier's own accuracy on the held-out reference digits
    samples: int
    frechet: float  # generated vs real held-out
    frechet_baseline: float  # real train vs real held-out
    label_accuracy: float | None  # conditional models
    classes_covered: int  # classes holding >= 5% of samples (unconditional: of all samples)
    class_shares: list[float]

    @property
    def frechet_ratio(self) -> float:
        return self.frechet / self.frechet_baseline

    def to_dict(self) -> dict[str, float | int | list[float] | None]:
        d: dict[str, float | int | list[float] | None] = dict(asdict(self))
        d["frechet_ratio"] = self.frechet_ratio
        return d


@torch.inference_mode()
def _features_and_predictions(
    classifier: nn.Module, x: torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    assert isinstance(classifier, DigitsClassifier)
    h = classifier.features(x)
    return h.numpy().astype(np.float64), classifier.classify(h).argmax(1).numpy()


def scorable(config: ModelConfig) -> bool:
    """The score asks a conditional model for labels 0..9: unconditional or 10-class models."""
    return config.num_classes in (0, 10)


def evaluate_generator(generator: nn.Module, config: ModelConfig, seed: int = 0) -> QualityReport:
    """Score an eval-mode ``generator`` against real digits, as many samples as the train split."""
    if not scorable(config):
        raise UsageError(
            f"the digits score asks a conditional model for labels 0..9, and this one has "
            f"{config.num_classes} classes; score unconditional or 10-class digit models only"
        )
    classifier = load_classifier()  # may train it: outside inference mode
    with torch.inference_mode():
        return _evaluate(generator, config, seed, classifier)


def _evaluate(
    generator: nn.Module, config: ModelConfig, seed: int, classifier: nn.Module
) -> QualityReport:
    real_train, train_labels = _reference_digits("train", config)
    real_test, test_labels = _reference_digits("test", config)
    n = len(real_train)
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, config.latent_dim, generator=gen)
    # Conditional models draw labels with the real class frequencies, so Frechet stays comparable.
    labels = train_labels[torch.randperm(n, generator=gen)] if config.conditional else None
    fake = torch.cat(
        [
            generator(z[i : i + 256], None if labels is None else labels[i : i + 256])
            for i in range(0, n, 256)
        ]
    )
    f_fake, pred = _features_and_predictions(classifier, to_classifier_input(fake))
    f_train, _ = _features_and_predictions(classifier, real_train)
    f_test, pred_test = _features_and_predictions(classifier, real_test)
    shares = np.bincount(pred, minlength=10) / len(pred)
    return QualityReport(
        classifier_accuracy=float((pred_test == test_labels.numpy()).mean()),
        samples=n,
        frechet=frechet_distance(f_fake, f_test),
        frechet_baseline=frechet_distance(f_train, f_test),
        label_accuracy=None if labels is None else float((pred == labels.numpy()).mean()),
        classes_covered=int((shares >= COVERAGE_SHARE).sum()),
        class_shares=[round(float(s), 4) for s in shares],
    )


@dataclass(frozen=True)
class UpscaleReport:
    """An upscaler on the held-out digits, beside bicubic from the same input and the target (HR)
    itself. PSNR and SSIM are per-image means on [0, 1] pixels (SSIM: Gaussian 11x11, sigma 1.5,
    Wang et al. 2004)."""

    classifier_accuracy: float  # the classifier's own accuracy on the held-out targets (HR)
    samples: int
    scale: int
    input_blur: float  # the defocus of the inputs (sigma, input pixels), as trained
    psnr: float  # the model's output vs the target, dB
    psnr_bicubic: float
    ssim: float
    ssim_bicubic: float
    label_accuracy: float  # the classifier reads the model's output as the right digit
    label_accuracy_bicubic: float

    def to_dict(self) -> dict[str, float | int]:
        return dict(asdict(self))


def psnr(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [-1, 1] images, on [0, 1] pixels (capped at 100 dB: identical)."""
    mse = ((images.clamp(-1, 1) - targets) / 2).square().flatten(1).mean(1)
    return -10 * torch.log10(mse.clamp_min(1e-10))


def ssim(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-image SSIM of [-1, 1] images on [0, 1] pixels, averaged over channels."""
    from gendeploy.trainer.data import gaussian_blur

    x, y = (images.clamp(-1, 1) + 1) / 2, (targets + 1) / 2
    c1, c2, r = 0.01**2, 0.03**2, 5  # window 11 = 2r + 1

    def mean(t: torch.Tensor) -> torch.Tensor:  # Gaussian-weighted, 'valid' positions only
        return gaussian_blur(t, 1.5)[..., r:-r, r:-r]

    mu_x, mu_y = mean(x), mean(y)
    var_x, var_y = mean(x * x) - mu_x**2, mean(y * y) - mu_y**2
    cov = mean(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + c1) * (2 * cov + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2)
    return (num / den).flatten(1).mean(1)


def evaluate_upscaler(generator: nn.Module, config: ModelConfig, blur: float) -> UpscaleReport:
    """Score an eval-mode upscaler on the held-out digits, read as it was trained (``blur``)."""
    classifier = load_classifier()  # may train it: outside inference mode
    pairs = load_pairs(
        DatasetName.digits,
        config.image_size,
        config.scale,
        config.image_channels,
        split="test",
        blur=blur,
        low_channels=config.input_shape[0],
    )
    with torch.inference_mode():
        upscaled = torch.cat(
            [generator(pairs.low[i : i + 256]) for i in range(0, len(pairs.low), 256)]
        )
        low = pairs.low if pairs.low.shape[1] == pairs.high.shape[1] else pairs.low.mean(1, True)
        baseline = bicubic(low, config.scale).expand_as(pairs.high)
        truth = pairs.labels.numpy()

        def accuracy(images: torch.Tensor) -> float:
            _, predicted = _features_and_predictions(classifier, to_classifier_input(images))
            return float((predicted == truth).mean())

        return UpscaleReport(
            classifier_accuracy=accuracy(pairs.high),
            samples=len(pairs.high),
            scale=config.scale,
            input_blur=blur,
            psnr=float(psnr(upscaled, pairs.high).mean()),
            psnr_bicubic=float(psnr(baseline, pairs.high).mean()),
            ssim=float(ssim(upscaled, pairs.high).mean()),
            ssim_bicubic=float(ssim(baseline, pairs.high).mean()),
            label_accuracy=accuracy(upscaled),
            label_accuracy_bicubic=accuracy(baseline),
        )


def evaluate_checkpoint(path: Path, seed: int = 0) -> QualityReport | UpscaleReport:
    """Score a checkpoint's deployable generator and write ``quality.json`` next to it; an
    upscaler is scored on the inputs it was trained on (its train config's ``input_blur``)."""
    import json

    from gendeploy.trainer.checkpoint import load_generator

    generator, ckpt = load_generator(path)
    if ckpt.model_config.image_to_image:
        blur = float(ckpt.train_config.get("input_blur", 0.0))
        report: QualityReport | UpscaleReport = evaluate_upscaler(
            generator, ckpt.model_config, blur
        )
    else:
        report = evaluate_generator(generator, ckpt.model_config, seed)
    payload = {"checkpoint": str(path), "step": ckpt.step, **report.to_dict()}
    text = json.dumps(payload, indent=2) + "\n"
    atomic_write(Path(path).parent / "quality.json", lambda f: f.write(text.encode()))
    return report
