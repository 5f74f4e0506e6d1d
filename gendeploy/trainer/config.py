"""What a training run is: the model (``ModelConfig``), the training (``TrainConfig``), the presets
pairing them, and how flags override them. Shared by the networks, the training loop, the run
directory and the CLI; light on purpose (no torch), so the CLI's choices come from here."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from typing import Any

from gendeploy.errors import CheckpointError, UsageError


class Arch(str, Enum):
    mlp = "mlp"
    dcgan = "dcgan"
    srgan = "srgan"  # image to image: a low-resolution image in, the image x scale out


IMAGE_TO_IMAGE = (Arch.srgan,)
SR_SCALES = (2, 4, 8)


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild the networks; stored in every checkpoint."""

    arch: Arch = Arch.dcgan
    latent_dim: int = 100
    image_channels: int = 1
    image_size: int = 32
    num_classes: int = 0  # 0: unconditional
    width: int = 64  # DCGAN: feature maps at the widest stage (ngf/ndf); MLP: first hidden size
    embed_dim: int = 50  # conditional models: size of the label embedding
    # Image-to-image models (srgan): output side / input side, the input image's channels (0: as
    # image_channels, the output's), and residual blocks at the input resolution. Noise models
    # keep the defaults, so checkpoints written before these fields existed load unchanged.
    scale: int = 1
    input_channels: int = 0
    blocks: int = 4

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "arch", Arch(self.arch))
        except ValueError:
            choices = ", ".join(a.value for a in Arch)
            raise ValueError(f"unknown model {self.arch!r}; choose one of: {choices}") from None
        if self.arch is Arch.dcgan and self.image_size not in (32, 64):
            raise ValueError(f"dcgan supports image_size 32 or 64, got {self.image_size}")
        if self.image_to_image:
            self._check_image_to_image()
        elif self.scale != 1 or self.input_channels:
            raise ValueError(
                f"scale and input_channels describe image-to-image models; {self.arch.value} "
                "draws images from noise"
            )
        if self.image_size < 4 or self.image_channels not in (1, 3):
            raise ValueError(
                f"image must be 1 or 3 channels and at least 4x4, got "
                f"{self.image_channels}x{self.image_size}x{self.image_size}"
            )
        if self.latent_dim < 1 or self.width < 1 or self.num_classes < 0:
            raise ValueError("latent_dim and width must be positive, num_classes >= 0")

    def _check_image_to_image(self) -> None:
        if self.scale not in SR_SCALES:
            choices = ", ".join(map(str, SR_SCALES))
            raise ValueError(f"{self.arch.value} upscales by {choices}, not {self.scale}")
        side = self.image_size
        if side & (side - 1) or side < 4 * self.scale:  # the discriminator halves it down to 4x4
            raise ValueError(
                f"{self.arch.value}: image_size (the output side) must be a power of two and at "
                f"least 4 x scale = {4 * self.scale}, got {side}"
            )
        if self.input_channels not in (0, 1, 3) or self.blocks < 1 or self.num_classes:
            raise ValueError(
                f"{self.arch.value}: input_channels 1 or 3 (0: as the output), blocks >= 1, "
                "and no classes (it is not label-conditional)"
            )

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_channels, self.image_size, self.image_size)

    @property
    def image_to_image(self) -> bool:
        """An image in (``input_shape``), an image out; no latent, no labels."""
        return self.arch in IMAGE_TO_IMAGE

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """What an image-to-image model reads at training size (any size at inference)."""
        side = self.image_size // self.scale
        return (self.input_channels or self.image_channels, side, side)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["arch"] = self.arch.value
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown model config fields: {sorted(unknown)}")
        return cls(**d)


class GanLoss(str, Enum):
    nonsaturating = "nonsaturating"  # -log D(G(z)) for G, real -> 1 / fake -> 0 for D
    relativistic = "relativistic"  # ESRGAN's relativistic average loss (srgan only)


class DatasetName(str, Enum):
    digits = "digits"
    mnist = "mnist"
    fashion_mnist = "fashion-mnist"
    cifar10 = "cifar10"
    folder = "folder"
    fake = "fake"


@dataclass(frozen=True)
class TrainConfig:
    dataset: DatasetName = DatasetName.digits
    data_path: str | None = None
    steps: int = 2000
    batch_size: int = 64
    lr: float = 2e-4
    betas: tuple[float, float] = (0.5, 0.999)
    # 0 disables the generator EMA. The warm-up (1 + step) / (10 + step) caps the decay, so 0.999
    # only takes effect after step ~9000: short runs average over roughly the last 200-300 steps.
    ema_decay: float = 0.0
    aux_weight: float = 1.0  # conditional models: weight of the auxiliary class loss (AC-GAN)
    # Mode seeking (Mao et al., MSGAN): rewards different images for different z under one label;
    # without it conditional generators here learn one image per class and ignore z.
    diversity_weight: float = 0.0
    # DiffAugment (Zhao et al.): random translations of every image the discriminator sees, real
    # and fake alike, so a small dataset does not let it memorise; fraction of the image side.
    translate: float = 0.0
    # Image-to-image models: the adversarial loss, its weight beside the L1 pixel loss (weight 1),
    # and a Gaussian blur (sigma, in input pixels) of the input images: a defocused scan.
    gan_loss: GanLoss = GanLoss.nonsaturating
    adversarial_weight: float = 0.01
    input_blur: float = 0.0
    seed: int = 0
    sample_every: int = 250
    checkpoint_every: int = 250
    eval_at_end: bool = True

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "dataset", DatasetName(self.dataset))
        except ValueError:
            choices = ", ".join(d.value for d in DatasetName)
            raise UsageError(
                f"unknown dataset {self.dataset!r}; choose one of: {choices}"
            ) from None
        try:
            object.__setattr__(self, "gan_loss", GanLoss(self.gan_loss))
        except ValueError:
            choices = ", ".join(g.value for g in GanLoss)
            raise UsageError(
                f"unknown GAN loss {self.gan_loss!r}; choose one of: {choices}"
            ) from None
        if self.adversarial_weight < 0 or self.input_blur < 0:
            raise UsageError("--adversarial-weight and --input-blur must be >= 0")
        object.__setattr__(self, "betas", tuple(self.betas))
        if self.steps < 1 or self.batch_size < 1:
            raise UsageError("--steps and --batch-size must be at least 1")
        if not 0 <= self.ema_decay < 1:
            raise UsageError(f"--ema must be in [0, 1), got {self.ema_decay}")
        if self.sample_every < 1 or self.checkpoint_every < 1:
            raise UsageError("--sample-every and --checkpoint-every must be at least 1")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["dataset"] = self.dataset.value
        d["gan_loss"] = self.gan_loss.value
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise CheckpointError(f"unknown train config fields: {sorted(unknown)}")
        return cls(**d)


# What may differ when a run is resumed: how long it goes on and how often it reports.
RESUMABLE_CHANGES = ("steps", "sample_every", "checkpoint_every", "eval_at_end")


@dataclass(frozen=True)
class Preset:
    description: str
    model: ModelConfig
    train: TrainConfig = field(default_factory=TrainConfig)


class PresetName(str, Enum):
    digits_cdcgan = "digits-cdcgan"
    digits_dcgan = "digits-dcgan"
    seed_mlp = "seed-mlp"
    dcgan64 = "dcgan64"
    digits_sr4x = "digits-sr4x"


PRESETS: dict[str, Preset] = {
    PresetName.digits_cdcgan.value: Preset(
        "conditional DCGAN 32x32 on digits (the default)",
        ModelConfig(arch="dcgan", image_size=32, num_classes=10, width=32),  # type: ignore[arg-type]
        TrainConfig(
            steps=2000, batch_size=64, ema_decay=0.999, diversity_weight=0.5, translate=0.125
        ),
    ),
    PresetName.digits_dcgan.value: Preset(
        "unconditional DCGAN 32x32 on digits",
        ModelConfig(arch="dcgan", image_size=32, width=32),  # type: ignore[arg-type]
        TrainConfig(
            steps=3000, batch_size=64, ema_decay=0.999, diversity_weight=0.5, translate=0.125
        ),
    ),
    PresetName.seed_mlp.value: Preset(
        "the classic MLP GAN (latent 100 -> 256 -> 512 -> 1024), fixed, on digits 32x32",
        ModelConfig(arch="mlp", image_size=32, width=64),  # type: ignore[arg-type]
        TrainConfig(steps=3000, batch_size=64),
    ),
    PresetName.dcgan64.value: Preset(
        "the reference DCGAN-64 (pytorch/examples), RGB 64x64; pair with --dataset",
        ModelConfig(arch="dcgan", image_size=64, image_channels=3, width=64),  # type: ignore[arg-type]
        TrainConfig(steps=5000, batch_size=64),
    ),
    PresetName.digits_sr4x.value: Preset(
        "super-resolution GAN x4 on digits: defocused 8x8 scans in, 32x32 out",
        ModelConfig(arch="srgan", image_size=32, scale=4, width=32, blocks=4),  # type: ignore[arg-type]
        TrainConfig(
            steps=2000,
            batch_size=32,
            betas=(0.9, 0.99),
            gan_loss=GanLoss.relativistic,
            adversarial_weight=0.01,
            input_blur=1.0,
        ),
    ),
}
DEFAULT_PRESET = PresetName.digits_cdcgan.value


def preset(name: str) -> Preset:
    if name not in PRESETS:
        raise UsageError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}")
    return PRESETS[name]


def with_overrides(base: Preset, **overrides: Any) -> tuple[ModelConfig, TrainConfig]:
    """Apply CLI flags (None = keep the preset's value) to a preset's configs."""
    model_fields = set(ModelConfig.__dataclass_fields__)
    model_kw = {k: v for k, v in overrides.items() if v is not None and k in model_fields}
    train_kw = {k: v for k, v in overrides.items() if v is not None and k not in model_fields}
    try:
        return replace(base.model, **model_kw), replace(base.train, **train_kw)
    except ValueError as e:
        raise UsageError(str(e)) from None
