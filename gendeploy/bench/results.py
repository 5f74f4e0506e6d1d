"""The bench report as types: what the sweeps measure (``CellResult`` per runner and batch,
``ServedResult`` per served concurrency level), each model's section, the goals, the whole report.

``run_bench`` builds a ``BenchReport``; ``report.json`` is its ``to_dict()``, written once at the
end; ``BenchReport.from_dict`` reads one back (checking every field's type) for ``--from-json``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pydantic import TypeAdapter, ValidationError

from gendeploy.errors import GendeployError

# 2: every model carries quality/served/profile/layers (null or empty when not measured), the
# report records the goal targets it was judged against. 1 (before) is read with their defaults.
SCHEMA_VERSION = 2
READABLE_VERSIONS = (1, 2)


@dataclass
class CellResult:
    """One runner at one batch size: the row of the report."""

    runner: str
    precision: str
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    gflops: float  # achieved, from the counted FLOPs
    speedup: float  # over eager fp32 at the same batch, same run
    max_abs_diff: float  # against eager fp32 on the same inputs
    peak_rss_mib: float  # process high-water mark while this runner ran (weights of all included)
    stable: bool
    windows: int
    calls: int
    # of the best FP32 matmul peak of the whole run (bf16 may pass 1.0): set once by run_bench,
    # when both peak measurements are in
    peak_fraction: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ServedResult:
    protocol: str
    concurrency: int
    batch: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    images_per_s: float
    stable: bool
    tool: str  # "perf_analyzer" or "tritonclient load loop"
    note: str = ""
    breakdown_ms: dict[str, float] = field(default_factory=dict)  # perf_analyzer's mean parts

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Goals:
    """A suite's targets: what its goals model (speed) and quality model (INT8) must reach."""

    speedup_batch1: float = 6.0  # best engine over eager FP32 at batch 1
    speedup_batch64: float = 1.5  # ... at batch 64
    fp32_peak_fraction: float = 0.85  # best FP32 engine's share of the FP32 matmul peak
    served_ratio: float = 0.9  # served at concurrency 4 over in-process batch 1
    gated_speedup: float = 6.0  # best engine that passed the quality gate, batch 64 and 1
    int8_label_drop_points: float = 0.5  # digits label accuracy lost to INT8, in points
    int8_frechet_increase: float = 0.05  # INT8's Frechet ratio to real digits over FP32's, - 1
    int8_gate: float = 1.10  # INT8's distribution gate (Frechet ratio vs FP32)
    int8_export_s: float = 30.0  # what --int8 adds to the export


@dataclass
class Goal:
    goal: str
    target: float
    measured: float | None  # None: not measured in this run (``detail`` says why)
    met: bool | None
    by: str
    detail: str


@dataclass
class Skipped:
    runner: str
    reason: str


@dataclass
class PsnrFigures:
    """Per-seed PSNR of a runner's images against eager FP32's, over the quality gate's seeds."""

    min_db: float
    p1_db: float
    median_db: float
    mean_db: float


@dataclass
class PsnrBoundsRecord:
    min_p1_db: float
    min_median_db: float


@dataclass
class DigitsFigures:
    label_accuracy: float | None  # conditional models
    frechet_ratio: float  # to real held-out digits, over the real-train baseline


@dataclass
class RunnerQuality:
    """What one runner draws, judged by the export's quality gate (``QualityResult.to_dict``)."""

    precision: str
    seeds: int
    feature_space: str
    psnr: PsnrFigures
    frechet: float
    frechet_floor: float
    frechet_ratio: float
    max_frechet_ratio: float
    psnr_bounds: PsnrBoundsRecord | None
    digits_fp32: DigitsFigures | None = None
    digits: DigitsFigures | None = None
    failures: list[str] = field(default_factory=list)
    passed: bool = False


@dataclass
class Unjudged:
    """A runner the quality gate could not judge, and why."""

    error: str


@dataclass
class OpTime:
    op: str  # an aten op, an ONNX op type, or an ONNX node
    ms: float
    share: float  # of the profiled call


@dataclass
class ProfileRecord:
    """Where one runner's time goes at one batch (``bench.profile``)."""

    runner: str
    batch: int
    ms_per_call: float
    ops: list[OpTime]
    nodes: list[OpTime] = field(default_factory=list)  # ONNX Runtime: its busiest nodes


@dataclass
class LayerTime:
    layer: str
    shape: str  # "[in] -> [out]" per sample
    ms: float
    mflop: float
    gflops: float


@dataclass
class LayerProfile:
    """Eager time and achieved GFLOP/s of each weighted layer at one batch."""

    runner: str
    batch: int
    layers: list[LayerTime]


@dataclass
class ExportSummary:
    artifacts: list[str] = field(default_factory=list)
    skipped: list[dict[str, str]] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)
    float_layers: dict[str, Any] = field(default_factory=dict)  # INT8 fallback: layers kept float


@dataclass
class ServedSweep:
    """The export behind a real tritonserver: one ``ServedResult`` per protocol and level."""

    model: str
    tool: str
    perf_analyzer: str = ""
    perf_analyzer_version: str = ""
    results: list[ServedResult] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    queue_delay_us: int | None = None
    instances: int = 1  # of the served model
    triton_version: str = ""
    max_abs_diff: dict[str, float] = field(default_factory=dict)
    skipped: str = ""  # why nothing was measured


@dataclass
class ModelReport:
    name: str
    config: dict[str, Any]  # the trainer's ModelConfig, or a user model's shapes
    source: str  # where the weights came from
    flops_per_image: float
    cells: list[CellResult] = field(default_factory=list)
    # trained weights (its checkpoint exists), not random ones: only then do its quality figures
    # say anything about a trained model; None in reports from before this was recorded
    trained: bool | None = None
    goals_model: bool = False
    quality_goals_model: bool = False
    export: ExportSummary = field(default_factory=ExportSummary)
    quality: dict[str, RunnerQuality | Unjudged] = field(default_factory=dict)  # by runner
    skipped: list[Skipped] = field(default_factory=list)
    served: ServedSweep | None = None
    profile: list[ProfileRecord] = field(default_factory=list)
    layers: list[LayerProfile] = field(default_factory=list)


@dataclass
class RuleRecord:
    window_s: float
    stable_windows: int
    tolerance: float
    max_windows: int
    served_window_ms: int | None = None
    served_max_windows: int | None = None


@dataclass
class PeakRecord:
    gflops: float
    by: str = ""
    start: dict[str, float] = field(default_factory=dict)  # library -> GFLOP/s
    end: dict[str, float] = field(default_factory=dict)


@dataclass
class Busy:
    other_processes_cpu_share: float | None = None
    disturbed: bool | None = None  # None: judge from the share alone (older reports)
    load_average_end: list[float] | None = None


@dataclass
class BenchReport:
    suite: str
    command: str
    started: str
    machine: dict[str, Any]  # bench.machine.machine_info()
    threads: int
    rule: RuleRecord
    models: list[ModelReport] = field(default_factory=list)
    runners: dict[str, dict[str, str]] = field(default_factory=dict)  # registry.describe()
    busy_before: float | None = None
    peaks: dict[str, PeakRecord] = field(default_factory=dict)
    duration_s: float = 0.0
    busy: Busy = field(default_factory=Busy)
    targets: Goals = field(default_factory=Goals)  # the suite's, judged by report.evaluate_goals
    goals: list[Goal] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any, origin: str = "the report") -> BenchReport:
        """A recorded report; refuses one of another schema version with the fix in one line."""
        if not isinstance(data, dict) or "models" not in data:
            raise GendeployError(f"{origin} is not a gendeploy bench report (no 'models')")
        version = data.get("schema_version")
        if version not in READABLE_VERSIONS:
            raise GendeployError(
                f"{origin} has bench report schema_version {version!r}; this gendeploy reads "
                f"{', '.join(map(str, READABLE_VERSIONS))}: re-run `gendeploy bench` to record it "
                "again"
            )
        try:
            report = _ADAPTER.validate_python({**data, "schema_version": SCHEMA_VERSION})
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise GendeployError(
                f"{origin} is not a valid bench report at {where}: {first['msg']}; re-run "
                "`gendeploy bench` to record it again"
            ) from None
        return report


_ADAPTER: TypeAdapter[BenchReport] = TypeAdapter(BenchReport)
