"""Bench runners agree with eager on a real export; missing ones are skipped with a reason;
FLOPs, peak and machine facts are real numbers."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gendeploy.bench.flops import count_flops, flops_per_image
from gendeploy.bench.machine import BusyMeter, cpu_info, machine_info
from gendeploy.bench.peak import matmul_peak
from gendeploy.bench.suites import ALL_RUNNERS, TINY
from gendeploy.bench.sweep import make_feeds, peak_rss_mib, sweep_batch
from gendeploy.bench.timing import StabilityRule
from gendeploy.manifest import Manifest
from gendeploy.runtime.base import Feeds, Runner
from gendeploy.runtime.eager import EagerRunner
from gendeploy.runtime.registry import (
    REGISTRY,
    RunnerContext,
    RunnerUnavailable,
    build_runner,
    get_entry,
)
from gendeploy.trainer.config import Arch, ModelConfig
from gendeploy.trainer.models import build_generator

# bf16 keeps 8 bits of mantissa: outputs in [-1, 1] land within a few 1e-2 of FP32; INT8 rounds
# activations to 256 levels per tensor: the export's INT8 tensor bound.
TOLERANCE = {"fp32": 1e-4, "bf16": 0.1, "fp16": 0.02, "int8": 0.5}


# What a runner's skip reason must name: the library, device or CPU unit it lacks (by family),
# the export artifact it runs, or the precision its engine did not execute.
MISSING = {
    "eager": ("bf16", "bfloat16", "fp16", "float16", "CUDA"),
    "torch_compile": ("C++ compiler",),
    "onnxruntime": ("onnxruntime", "ExecutionProvider"),
    "tensorrt": ("tensorrt", "TensorRT", "CUDA"),
    "openvino": ("openvino", "OpenVINO"),
}


def _missing_pieces(name: str) -> tuple[str, ...]:
    family = max((f for f in MISSING if name.startswith(f)), key=len)
    artifact = get_entry(name).artifact
    return (*MISSING[family], *((repr(artifact), f" {artifact}:") if artifact else ()), "executed")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Path, nn.Module]:
    from gendeploy.bench.run import prepare_checkpoint
    from gendeploy.export.api import export
    from gendeploy.export.options import ExportOptions, ModelSpec
    from gendeploy.export.source import load_eager

    work = tmp_path_factory.mktemp("bench")
    checkpoint, _ = prepare_checkpoint(TINY, work)
    out = work / "export"
    options = ExportOptions(max_batch=8, int8=True, calibration_samples=32)
    manifest = export(ModelSpec(checkpoint=checkpoint), options, out=out)
    return manifest, out, load_eager(manifest)


def _context(exported: tuple[Manifest, Path, nn.Module]) -> RunnerContext:
    manifest, export_dir, module = exported
    return RunnerContext(manifest, export_dir, module, threads=1)


@pytest.mark.parametrize("name", ALL_RUNNERS)
def test_every_runner_agrees_with_eager_or_says_why_it_cannot_run_here(
    exported: tuple[Manifest, Path, nn.Module], name: str
) -> None:
    manifest, _, module = exported
    entry = get_entry(name)
    reason = entry.unavailable(_context(exported))
    try:
        built = build_runner(name, _context(exported))
    except RunnerUnavailable as e:
        # the only reasons to skip: the machine lacks it, or the engine did not run the precision
        why = str(e)
        assert reason is not None or "executed" in why or "skipped" in why, why
        if reason is not None:
            assert why == reason
        missing = _missing_pieces(name)
        assert any(piece in why for piece in missing), f"{why!r} names none of {missing}"
        pytest.skip(f"{name} cannot run here: {why}")
    assert reason is None
    feeds = make_feeds(4, manifest.latent_dim, manifest.num_classes)
    with built:
        out = built.run(feeds)
    reference = EagerRunner(module, threads=1).run(feeds)
    assert built.name == name
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert np.abs(out - reference).max() <= TOLERANCE[entry.precision.value]
    if entry.strict_precision:  # it executed what it is named for
        assert entry.precision.value in built.precision.split("+")


def test_every_runner_is_one_registered_class_with_its_precision_and_artifact() -> None:
    assert tuple(REGISTRY) == ALL_RUNNERS
    for name, entry in REGISTRY.items():
        assert entry.name == name and entry.description
        assert entry.artifact is None or isinstance(entry.artifact, str)
    assert {"openvino_int8", "onnxruntime_int8", "tensorrt_int8"} <= set(REGISTRY)


def test_openvino_int8_executes_int8_and_ort_says_what_it_made_of_the_qdq_model(
    exported: tuple[Manifest, Path, nn.Module],
) -> None:
    openvino = build_runner("openvino_int8", _context(exported))
    assert openvino.precision == "int8", openvino.precision
    openvino.close()
    ort = build_runner("onnxruntime_int8", _context(exported))
    # ConvTranspose has no INT8 kernel in ORT's CPU provider: dequantized, FP32 arithmetic
    assert ort.precision == "fp32", ort.precision


def test_the_bf16_hint_is_no_bf16_row_unless_openvino_runs_bf16(
    exported: tuple[Manifest, Path, nn.Module],
) -> None:
    from gendeploy.runtime.openvino import OpenVINORunner

    manifest, export_dir, module = exported
    hinted = OpenVINORunner(export_dir / "fp32.onnx", "bf16", threads=1)
    feeds = make_feeds(4, manifest.latent_dim, manifest.num_classes)
    diff = float(np.abs(hinted.run(feeds) - EagerRunner(module, threads=1).run(feeds)).max())
    if hinted.precision == "fp32":  # this CPU: the runtime graph ran f32 despite the hint
        assert diff < 1e-5  # and the output says the same: it is FP32
        with pytest.raises(RunnerUnavailable, match="executed fp32"):
            build_runner("openvino_bf16", _context(exported))
    else:
        assert "bf16" in hinted.precision and diff > 1e-6


def test_tensorrt_is_skipped_here_with_the_reason(
    exported: tuple[Manifest, Path, nn.Module],
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run TensorRT")
    for name in ("tensorrt", "tensorrt_int8"):
        with pytest.raises(RunnerUnavailable, match=r"(?i)tensorrt|cuda"):
            build_runner(name, _context(exported))


def test_flops_of_a_transposed_convolution_match_the_formula() -> None:
    layer = nn.ConvTranspose2d(8, 4, 4, 2, 1, bias=False)
    x = torch.zeros(3, 8, 5, 5)
    # each input pixel scatters a 4x4 kernel to every output channel: 2 * N*Cin*H*W*Cout*k*k
    assert count_flops(layer, (x,)) == 2 * 3 * 8 * 5 * 5 * 4 * 4 * 4


def test_dcgan64_costs_what_its_layers_add_up_to() -> None:
    config = ModelConfig(arch=Arch.dcgan, image_size=64, image_channels=3, width=64)
    stages = [(100, 512, 1), (512, 256, 4), (256, 128, 8), (128, 64, 16), (64, 3, 32)]
    expected = sum(2 * cin * cout * 16 * hw * hw for cin, cout, hw in stages)
    assert flops_per_image(build_generator(config).eval(), 100, 0) == expected


def test_matmul_peak_is_the_best_gemm_library_here_and_machine_facts_are_recorded() -> None:
    peak = matmul_peak(
        "fp32", size=256, threads=1, rule=StabilityRule(window_s=0.02, max_windows=3)
    )
    assert peak.dtype == "fp32" and peak.gflops == max(peak.each.values()) > 0
    assert {"torch", "onnxruntime"} <= set(peak.each) and peak.by in peak.each
    info = machine_info()
    assert info["cpu"]["model"] and info["logical_cores"] >= 1
    assert info["versions"]["torch"] == torch.__version__
    assert 0.0 <= BusyMeter().other_share() <= 1.0


def _busy_loop(seconds: float) -> str:
    return f"python3 -c 'import time; t = time.time()\nwhile time.time() - t < {seconds}: pass'"


def test_the_busy_meter_keeps_our_orphans_ours_and_counts_a_foreign_process() -> None:
    """A descendant that outlives its parent (as Triton's stubs under Model Analyzer) stays ours;
    the kernel's children times would lose it and call its work another process's. A process
    that never was ours counts as another's. Asserted per process, so whatever else runs on the
    machine (CI shares it) cannot change the verdict."""
    import psutil

    meter = BusyMeter(interval_s=0.5)  # sees the busy grandchild before its parent exits
    orphan = subprocess.run(
        ["bash", "-c", f"{_busy_loop(3)} >/dev/null 2>&1 & echo $!; sleep 1.5; exit 0"],
        capture_output=True,
        text=True,
        check=True,
    )
    time.sleep(2.0)  # the orphan works on, to its end
    meter.other_share()
    pid = int(orphan.stdout)
    assert meter.is_ours(pid) and meter.taken_by(pid) == 0.0
    started = subprocess.run(  # orphaned at once: never seen as ours
        ["bash", "-c", f"({_busy_loop(3)} >/dev/null 2>&1 & echo $!)"],
        capture_output=True,
        text=True,
    )
    foreign = psutil.Process(int(started.stdout))
    meter = BusyMeter(interval_s=0.5)
    time.sleep(2.0)
    meter.other_share()
    psutil.wait_procs([foreign], timeout=10)
    assert not meter.is_ours(foreign.pid)
    assert meter.taken_by(foreign.pid) > 0.2  # busy for 2 s: a fifth of a core even when shared


def test_cpu_flags_come_from_cpuinfo(tmp_path: Path) -> None:
    fake = tmp_path / "cpuinfo"
    fake.write_text("model name\t: Test CPU 9000\nflags\t\t: fpu avx2 avx512f avx512_bf16 xyz\n")
    assert cpu_info(fake) == {"model": "Test CPU 9000", "flags": ["avx2", "avx512f", "avx512_bf16"]}
    fake.write_text("cpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t: avx2\n")
    assert cpu_info(fake)["model"] == "AMD EPYC (cpu family 25, model 17)"


def test_peak_rss_is_measured_while_a_function_runs() -> None:
    held: list[np.ndarray] = []
    rss = peak_rss_mib(lambda: held.append(np.ones(8 * 2**20 // 8)))
    if rss == 0.0:
        pytest.skip("this kernel does not let a process reset its RSS high-water mark")
    assert rss >= 16


class _BrokenRunner(Runner):
    """A backend that builds but cannot run (a compiler missing at first call, say)."""

    name = "broken"

    def run(self, feeds: Feeds) -> np.ndarray:
        raise RuntimeError("no C++ compiler for this graph")


def test_a_runner_that_fails_at_its_first_call_is_dropped_with_its_reason() -> None:
    config = ModelConfig(arch=Arch.dcgan, latent_dim=8, image_size=32, width=4)
    module = build_generator(config).eval()
    runners: dict[str, Runner] = {
        "eager": EagerRunner(module, threads=1),
        "broken": _BrokenRunner(),
    }
    failed: dict[str, str] = {}
    rule = StabilityRule(window_s=0.01, max_windows=3, warmup_calls=0)
    cells = sweep_batch(runners, 2, 8, 0, 1000, rule, failed=failed)
    assert [c.runner for c in cells] == ["eager"]
    assert set(runners) == {"eager"}
    assert failed == {"broken": "failed at batch 2: RuntimeError: no C++ compiler for this graph"}


class _FakeBF16(Runner):
    """Labelled bf16, computes FP32: the eager module itself."""

    name = "fake_bf16"
    precision = "bf16"

    def __init__(self, module: nn.Module) -> None:
        self.inner = EagerRunner(module, threads=1)

    def run(self, feeds: Feeds) -> np.ndarray:
        return self.inner.run(feeds)


def test_a_bf16_runner_whose_output_equals_fp32_is_dropped_not_reported_as_bf16() -> None:
    config = ModelConfig(arch=Arch.dcgan, latent_dim=8, image_size=32, width=4)
    module = build_generator(config).eval()
    runners: dict[str, Runner] = {
        "eager": EagerRunner(module, threads=1),
        "fake_bf16": _FakeBF16(module),
    }
    failed: dict[str, str] = {}
    rule = StabilityRule(window_s=0.01, max_windows=3, warmup_calls=0)
    cells = sweep_batch(runners, 2, 8, 0, 1000, rule, failed=failed)
    assert [c.runner for c in cells] == ["eager"]
    assert "equals eager FP32 within 1e-06" in failed["fake_bf16"]
