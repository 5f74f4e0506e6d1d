"""Bench suites: which models, batch sizes, concurrency levels, windows and runners."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from gendeploy.bench.results import Goals
from gendeploy.bench.timing import StabilityRule
from gendeploy.errors import UsageError
from gendeploy.runtime.registry import runner_names
from gendeploy.trainer.config import DEFAULT_PRESET, PRESETS, Arch, ModelConfig

DEMO_CHECKPOINT = Path("runs/demo/checkpoint.pt")
REPO_ROOT = Path(__file__).resolve().parents[2]  # examples/ lives there in a checkout

# Every in-process runner the bench knows (the registry), in report order; each is timed or listed
# as skipped with its reason.
ALL_RUNNERS = runner_names()


@dataclass(frozen=True)
class UserModel:
    """A generator from a Python file (exported like ``--model``), with seeded random weights."""

    spec: str  # path/to/file.py:Class, relative to the repository root
    latent_dim: int
    image_shape: tuple[int, int, int]
    num_classes: int = 0
    forward_kwargs: tuple[tuple[str, Any], ...] = ()  # (name, value) pairs

    def path(self) -> Path:
        return REPO_ROOT / self.spec.rpartition(":")[0]


@dataclass(frozen=True)
class BenchModel:
    """A generator to bench: a trainer checkpoint, a config with random weights, or a user model
    from a file (``user_model``; ``config`` is then only a placeholder)."""

    name: str
    config: ModelConfig
    checkpoint: Path | None = None  # used when it exists; else random init (speed is the same)
    goals: bool = False  # the speed goals are judged on this model
    quality_goals: bool = False  # the INT8 quality goals (digits score, gate, export time)
    user_model: UserModel | None = None


@dataclass(frozen=True)
class Suite:
    name: str
    models: tuple[BenchModel, ...]
    batches: tuple[int, ...] = (1, 8, 64, 256)
    concurrencies: tuple[int, ...] = (1, 2, 4, 8)
    rule: StabilityRule = field(default_factory=StabilityRule)
    runners: tuple[str, ...] = ALL_RUNNERS
    served: bool = True
    # perf_analyzer --measurement-interval and --max-trials (each level costs up to this many
    # windows, twice over when the first run finds none stable: served.PA_ATTEMPTS); 2 s windows
    # hold hundreds of requests even at concurrency 1, and a busy second of the machine's no
    # longer decides a window (on a shared machine 1 s windows failed at some level of each model)
    served_window_ms: int = 2000
    served_max_windows: int = 10
    queue_delay_us: int | None = None  # Triton dynamic batching delay; None: the repo's default
    # the served model's instances (Triton instance_group count); 0: the repository's default
    instances: int = 0
    threads: int = 0  # 0: the CPUs this process may use (gendeploy.cpus.available_cpus)
    profile: bool = True  # profile eager where a goal is missed
    goals: Goals = field(default_factory=Goals)  # targets the report judges the run against

    @property
    def served_rule(self) -> StabilityRule:
        """The same stability rule with the served sweep's window and cap."""
        return replace(
            self.rule, window_s=self.served_window_ms / 1e3, max_windows=self.served_max_windows
        )

    def __post_init__(self) -> None:
        if not self.models or not self.batches or min(self.batches) < 1:
            raise UsageError(f"suite {self.name!r}: needs models and batch sizes >= 1")
        if self.served and (not self.concurrencies or min(self.concurrencies) < 1):
            raise UsageError(f"suite {self.name!r}: concurrency levels must be >= 1")
        unknown = set(self.runners) - set(ALL_RUNNERS)
        if self.queue_delay_us is not None and self.queue_delay_us < 0:
            raise UsageError(f"queue delay must be >= 0 us, got {self.queue_delay_us}")
        if self.threads < 0:
            raise UsageError(f"threads must be >= 0 (0: the CPUs we may use), got {self.threads}")
        if self.instances < 0:
            raise UsageError(
                f"--instances must be >= 0 (0: the repository's default), got {self.instances}"
            )
        if unknown:
            raise UsageError(f"unknown runners {sorted(unknown)}; known: {', '.join(ALL_RUNNERS)}")


# the trainer's default preset (`make demo` trains it into runs/demo)
DEMO = BenchModel(
    "digits_cdcgan32",
    PRESETS[DEFAULT_PRESET].model,
    checkpoint=DEMO_CHECKPOINT,
    quality_goals=True,
)
DCGAN64 = BenchModel(
    "dcgan64", ModelConfig(arch=Arch.dcgan, image_size=64, image_channels=3, width=64), goals=True
)
TINY = BenchModel(
    "tiny_dcgan32",
    ModelConfig(arch=Arch.dcgan, latent_dim=16, image_size=32, num_classes=4, width=8, embed_dim=8),
)
# examples/stylegan: mapping network, truncation, modulated convolutions fused over the batch
STYLEGAN32 = BenchModel(
    "stylegan32",
    ModelConfig(arch=Arch.dcgan, latent_dim=64, image_size=32, image_channels=3),  # unused
    user_model=UserModel(
        "examples/stylegan/model.py:StyleGAN",
        latent_dim=64,
        image_shape=(3, 32, 32),
        forward_kwargs=(("noise_mode", "const"),),
    ),
)

SUITES: dict[str, Suite] = {
    "default": Suite("default", (DEMO, DCGAN64, STYLEGAN32)),
    "quick": Suite(
        "quick",
        (DEMO,),
        batches=(1, 64),
        concurrencies=(1, 4),
        rule=StabilityRule(window_s=0.2, max_windows=6),
        runners=tuple(r for r in ALL_RUNNERS if r != "torch_compile"),  # compiling takes ~30 s
        served_window_ms=500,
        served_max_windows=5,
        profile=False,
    ),
    # For tests and CI: seconds, on a tiny model, every path including the served one.
    "tiny": Suite(
        "tiny",
        (TINY,),
        batches=(1, 4),
        concurrencies=(1, 2),
        rule=StabilityRule(window_s=0.05, max_windows=4, warmup_calls=1),
        runners=("eager", "eager_bf16", "onnxruntime", "openvino_int8", "tensorrt"),
        served_window_ms=300,
        served_max_windows=4,
        threads=1,  # robust on a shared machine: 2 OpenMP threads on 2 busy cores stall
        profile=False,
    ),
}


def get_suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise UsageError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}") from None


def with_overrides(
    suite: Suite,
    batches: tuple[int, ...] | None = None,
    concurrencies: tuple[int, ...] | None = None,
    runners: tuple[str, ...] | None = None,
    served: bool | None = None,
    window_s: float | None = None,
    threads: int | None = None,
    models: tuple[str, ...] | None = None,
    queue_delay_us: int | None = None,
    instances: int | None = None,
) -> Suite:
    """The suite with command-line overrides applied (validated by ``Suite``)."""
    rule = replace(suite.rule, window_s=window_s) if window_s else suite.rule
    chosen = suite.models
    if models:
        known = {m.name: m for m in suite.models}
        unknown = sorted(set(models) - set(known))
        if unknown:
            raise UsageError(
                f"--models: suite {suite.name!r} has no {unknown}; it has {list(known)}"
            )
        chosen = tuple(known[name] for name in models)
    return replace(
        suite,
        batches=batches or suite.batches,
        concurrencies=concurrencies or suite.concurrencies,
        runners=runners or suite.runners,
        served=suite.served if served is None else served,
        rule=rule,
        threads=suite.threads if threads is None else threads,
        models=chosen,
        queue_delay_us=suite.queue_delay_us if queue_delay_us is None else queue_delay_us,
        instances=suite.instances if instances is None else instances,
    )
