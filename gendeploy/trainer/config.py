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

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "arch", Arch(self.arch))
        except ValueError:
            choices = ", ".join(a.value for a in Arch)
            raise ValueError(f"unknown model {self.arch!r}; choose one of: {choices}") from None
        if self.arch is Arch.dcgan and self.image_size not in (32, 64):
            raise ValueError(f"dcgan supports image_size 32 or 64, got {self.image_size}")
        if self.image_size < 4 or self.image_channels not in (1, 3):
            raise ValueError(
                f"image must be 1 or 3 channels and at least 4x4, got "
                f"{self.image_channels}x{self.image_size}x{self.image_size}"
            )
        if self.latent_dim < 1 or self.width < 1 or self.num_classes < 0:
            raise ValueError("latent_dim and width must be positive, num_classes >= 0")

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.image_channels, self.image_size, self.image_size)

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
