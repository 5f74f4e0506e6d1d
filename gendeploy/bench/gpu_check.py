"""The prepared GPU check (``make gpu-check OUT=dir``): export DCGAN-64 with TensorRT FP16 and
INT8 engines (the INT8 one built from the QDQ ONNX with explicit quantization), gate them against
eager PyTorch (tensors, and the quality gate on what they draw), and time them beside eager CUDA,
writing ``results.json`` and ``results.md`` into the given directory. Needs TensorRT and a CUDA
device (and NNCF + OpenVINO for the INT8 export); says why otherwise.

    python -m gendeploy.bench.gpu_check OUT_DIR
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from gendeploy.errors import ExportError, GendeployError, MissingDependencyError
from gendeploy.manifest import OutputKind
from gendeploy.runtime.base import Feeds, Runner
from gendeploy.runtime.tensorrt import TensorRTRunner, tensorrt_availability
from gendeploy.serve.backend_model import TrtEngine
from gendeploy.trainer.config import PRESETS, Arch, ModelConfig, with_overrides

BATCHES = (1, 8, 64)
MIN_SECONDS = 1.0  # per measurement
MAX_ITERS = 300


def run(out: Path) -> dict[str, Any]:
    import torch

    from gendeploy.export.api import export
    from gendeploy.export.options import ExportOptions, ModelSpec
    from gendeploy.runtime.eager import EagerRunner
    from gendeploy.trainer.models import build_generator, init_weights

    out.mkdir(parents=True, exist_ok=True)
    status = tensorrt_availability()
    results: dict[str, Any] = {"ok": False, "python": platform.python_version()}
    if not status.ok:
        results["reason"] = status.reason
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        raise MissingDependencyError(f"gpu-check needs TensorRT and a CUDA GPU: {status.reason}")

    from gendeploy.trainer.checkpoint import Checkpoint, save_checkpoint

    config = ModelConfig(arch=Arch.dcgan, image_size=64, image_channels=3, width=64)
    torch.manual_seed(0)
    generator = build_generator(config)
    generator.apply(init_weights)
    ckpt = out / "runs" / "dcgan64" / "checkpoint.pt"
    save_checkpoint(Checkpoint(config, 0, generator.state_dict()), ckpt)
    started = time.perf_counter()
    options = ExportOptions(
        fp16=True, int8=True, output=OutputKind.uint8, max_batch=64, require_engine=True
    )
    manifest = export(
        ModelSpec(checkpoint=ckpt), options, out=out / "export", force=True, log=print
    )
    results["export_seconds"] = round(time.perf_counter() - started, 2)
    results["timings"] = manifest.timings
    results["artifacts"] = {a.name: a.validation for a in manifest.artifacts}
    engine = manifest.artifact("trt_fp16")
    results["engine"] = engine.extra
    results["versions"] = manifest.versions

    rng = np.random.default_rng(0)
    rows = []
    eager = EagerRunner(generator.eval(), device="cuda")
    trt = TensorRTRunner(out / "export" / engine.path)
    trt_int8 = TensorRTRunner(out / "export" / manifest.artifact("trt_int8").path)
    results["int8_quality"] = manifest.artifact("trt_int8").validation.get("quality")
    # what the engines really run, read back with TensorRT's engine inspector
    results["executed"] = {"trt_fp16": trt.layer_precisions, "trt_int8": trt_int8.layer_precisions}
    if not trt_int8.layer_precisions.get("int8") or not trt.layer_precisions.get("fp16"):
        raise ExportError(
            f"the engine inspector does not show the engines' precisions: {results['executed']} "
            "(expected INT8 layers in trt_int8, FP16 layers in trt_fp16)"
        )
    for batch in BATCHES:
        feeds: Feeds = {"z": rng.standard_normal((batch, config.latent_dim)).astype(np.float32)}
        e, t, i = _time(eager, feeds), _time(trt, feeds), _time(trt_int8, feeds)
        rows.append({"batch": batch, "eager_cuda_fp32": e, "tensorrt_fp16": t,
                     "tensorrt_int8": i, "speedup_p50": round(e["p50_ms"] / t["p50_ms"], 2),
                     "int8_speedup_p50": round(e["p50_ms"] / i["p50_ms"], 2)})  # fmt: skip
    trt_int8.close()
    results["paths"] = _other_paths(trt, out / "export", manifest, config.latent_dim)
    trt.close()
    results["latency"] = rows
    results["train_cuda"] = _train_on_cuda(out / "runs" / "digits-cdcgan-cuda")
    results["ok"] = True
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "results.md").write_text(_markdown(results))
    print(_markdown(results))
    return results


def _train_on_cuda(run_dir: Path) -> dict[str, Any]:
    """The default preset, 200 steps on the GPU, scored at the end like any digits run."""
    from gendeploy.trainer.train import train

    model, config = with_overrides(PRESETS["digits-cdcgan"], steps=200, sample_every=100)
    started = time.perf_counter()
    result = train(model, config, run_dir, force=True, progress=False, device="cuda")
    quality = result.quality
    if quality is None:
        raise GendeployError(f"the CUDA training run was not scored: {result.quality_skipped}")
    return {
        "steps": result.steps,
        "seconds": round(time.perf_counter() - started, 2),
        "label_accuracy": quality.label_accuracy,
        "frechet_ratio": round(quality.frechet_ratio, 3),
    }


def _other_paths(trt: Runner, export_dir: Path, manifest: Any, latent: int) -> dict[str, Any]:
    """The GPU paths the timing does not take: the Triton model's own engine wrapper on both
    plans, and a batch above the profile, which must be refused."""

    feeds = {"z": np.random.default_rng(1).standard_normal((5, latent)).astype(np.float32)}
    checked: dict[str, Any] = {}
    for name in ("trt_fp16", "trt_fp16_uint8"):
        path = str(export_dir / manifest.artifact(name).path)
        served = TrtEngine(path, 0).run(feeds)
        with TensorRTRunner(path) as direct:
            expected = direct.run(feeds)
        diff = float(np.abs(served.astype(np.float32) - expected.astype(np.float32)).max())
        if served.dtype != expected.dtype or served.shape != expected.shape or diff > 1:
            raise GendeployError(
                f"the Triton model's engine wrapper disagrees with TensorRTRunner on {name}: "
                f"{served.dtype}{served.shape} vs {expected.dtype}{expected.shape}, diff {diff}"
            )
        checked[f"{name}_served_vs_direct_max_diff"] = diff
    too_big = {"z": np.zeros((manifest.batch.max + 1, latent), np.float32)}
    try:
        trt.run(too_big)
    except GendeployError as e:
        checked["over_max_batch"] = f"refused: {e}"
    else:
        raise GendeployError(f"batch {manifest.batch.max + 1} above the profile ran anyway")
    return checked


def _time(runner: Runner, feeds: Feeds) -> dict[str, float]:
    """Host numpy in -> host numpy out (both runners synchronize before returning)."""
    for _ in range(10):
        runner.run(feeds)
    samples: list[float] = []
    deadline = time.perf_counter() + MIN_SECONDS
    while len(samples) < MAX_ITERS and (len(samples) < 20 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        runner.run(feeds)
        samples.append((time.perf_counter() - t0) * 1e3)
    samples.sort()
    p50 = statistics.median(samples)
    return {
        "p50_ms": round(p50, 4),
        "p90_ms": round(samples[int(0.9 * (len(samples) - 1))], 4),
        "images_per_s": round(len(feeds["z"]) / (p50 / 1e3), 1),
        "iterations": len(samples),
    }


def _markdown(results: dict[str, Any]) -> str:
    eng = results["engine"]
    lines = [
        "# gpu-check: DCGAN-64, TensorRT FP16 vs eager PyTorch FP32 (CUDA)",
        "",
        f"GPU {eng['gpu']} (sm {eng['compute_capability']}), TensorRT {eng['tensorrt']}, "
        f"CUDA {eng['cuda']}; export + gate {results['export_seconds']} s",
        "",
        "| artifact | max abs diff | PSNR dB | max levels | batch invariance |",
        "|---|---|---|---|---|",
    ]
    for name, v in results["artifacts"].items():
        lines.append(
            f"| {name} | {v.get('max_abs_diff', '-')} | {v['psnr_db']} | {v['max_level_diff']} "
            f"| {v['batch_invariance_max_diff']} |"
        )
    lines += ["", *(f"- {k}: {v}" for k, v in results["paths"].items())]
    lines += [f"- train on CUDA (default preset, 200 steps): {results['train_cuda']}"]
    lines += [f"- TensorRT INT8 quality gate: {results.get('int8_quality')}"]
    lines += [f"- weighted layers by precision (engine inspector): {results.get('executed')}"]
    lines += [
        "",
        "| batch | eager p50 ms | TRT FP16 p50 ms | speedup | TRT INT8 p50 ms | speedup |",
        "|---|---|---|---|---|---|",
    ]
    for r in results["latency"]:
        lines.append(
            f"| {r['batch']} | {r['eager_cuda_fp32']['p50_ms']} | {r['tensorrt_fp16']['p50_ms']} "
            f"| {r['speedup_p50']}x | {r['tensorrt_int8']['p50_ms']} | {r['int8_speedup_p50']}x |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m gendeploy.bench.gpu_check OUT_DIR", file=sys.stderr)
        return 2
    try:
        run(Path(args[0]))
    except GendeployError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
