"""Bench runners agree with eager on a real export; missing ones are skipped with a reason;
FLOPs, peak and machine facts are real numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from gendeploy.bench.flops import count_flops, flops_per_image
from gendeploy.bench.machine import BusyMeter, cpu_info, machine_info
from gendeploy.bench.peak import matmul_peak
from gendeploy.bench.runners import DESCRIPTIONS, Skip, build_runner
from gendeploy.bench.suites import ALL_RUNNERS, TINY
from gendeploy.bench.sweep import make_feeds, peak_rss_mib, sweep_batch
from gendeploy.bench.timing import StabilityRule
from gendeploy.export.manifest import Manifest
from gendeploy.runtime.base import Feeds, Runner
from gendeploy.runtime.eager import EagerRunner
from gendeploy.trainer.models import Arch, ModelConfig, build_generator

# bf16 keeps 8 bits of mantissa: outputs in [-1, 1] land within a few 1e-2 of FP32.
TOLERANCE = {"fp32": 1e-4, "bf16": 0.1, "fp16": 0.02}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Manifest, Path, nn.Module]:
    from gendeploy.bench.run import prepare_checkpoint
    from gendeploy.export.api import ExportOptions, ModelSpec, export
    from gendeploy.export.source import load_eager

    work = tmp_path_factory.mktemp("bench")
    checkpoint, _ = prepare_checkpoint(TINY, work)
    out = work / "export"
    manifest = export(ModelSpec(checkpoint=checkpoint), ExportOptions(max_batch=8), out=out)
    return manifest, out, load_eager(manifest)


@pytest.mark.parametrize("name", ALL_RUNNERS)
def test_every_runner_agrees_with_eager_or_is_skipped_with_its_reason(
    exported: tuple[Manifest, Path, nn.Module], name: str
) -> None:
    manifest, export_dir, module = exported
    built = build_runner(name, manifest, export_dir, module, threads=1)
    if isinstance(built, Skip):
        assert built.runner == name and len(built.reason) > 5
        return
    feeds = make_feeds(4, manifest.latent_dim, manifest.num_classes)
    with built:
        out = built.run(feeds)
    reference = EagerRunner(module, threads=1).run(feeds)
    assert out.dtype == np.float32 and out.shape == reference.shape
    assert np.abs(out - reference).max() <= TOLERANCE[DESCRIPTIONS[name][0]]


def test_tensorrt_is_skipped_here_with_the_reason(
    exported: tuple[Manifest, Path, nn.Module],
) -> None:
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine may run TensorRT")
    manifest, export_dir, module = exported
    built = build_runner("tensorrt", manifest, export_dir, module, threads=1)
    assert isinstance(built, Skip)
    assert "tensorrt" in built.reason.lower() or "cuda" in built.reason.lower()


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
    cells = sweep_batch(runners, 2, 8, 0, 1000, {"fp32": 1.0}, rule, failed=failed)
    assert [c.runner for c in cells] == ["eager"]
    assert set(runners) == {"eager"}
    assert failed == {"broken": "failed at batch 2: RuntimeError: no C++ compiler for this graph"}
