"""Where the time goes: per-operator shares for eager PyTorch (torch.profiler) and ONNX Runtime
(its own node profiler), so a missed goal comes with its explanation."""

from __future__ import annotations

import json
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gendeploy.bench.sweep import make_feeds


def _top(totals: dict[str, float], top: int) -> list[dict[str, Any]]:
    whole = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [{"op": k, "ms": round(v, 3), "share": round(v / whole, 3)} for k, v in ranked]


def profile_eager(
    module: nn.Module, latent_dim: int, num_classes: int, batch: int, calls: int = 5, top: int = 6
) -> dict[str, Any]:
    """Self CPU time per aten op over ``calls`` forward passes, per call."""
    from torch.profiler import ProfilerActivity, profile

    feeds = make_feeds(batch, latent_dim, num_classes)
    args = [torch.from_numpy(v) for v in feeds.values()]
    with torch.inference_mode():
        module(*args)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                module(*args)
    totals = {
        e.key: e.self_cpu_time_total / 1e3 / calls
        for e in prof.key_averages()
        if e.self_cpu_time_total > 0
    }
    return {"runner": "eager", "batch": batch, "ms_per_call": round(sum(totals.values()), 3),
            "ops": _top(totals, top)}  # fmt: skip


def profile_onnxruntime(
    model_path: Path, latent_dim: int, num_classes: int, batch: int, threads: int,
    calls: int = 5, top: int = 6,
) -> dict[str, Any]:  # fmt: skip
    """Node time per ONNX op type from ONNX Runtime's profiler (kernel time, per call)."""
    import onnxruntime as ort

    feeds = make_feeds(batch, latent_dim, num_classes)
    with tempfile.TemporaryDirectory(prefix="gendeploy-ortprof-") as tmp:
        options = ort.SessionOptions()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "ort")
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        session = ort.InferenceSession(str(model_path), options, ["CPUExecutionProvider"])
        names = [i.name for i in session.get_inputs()]
        inputs = {n: feeds[n] for n in names}
        session.run(None, inputs)
        for _ in range(calls):
            session.run(None, inputs)
        trace = json.loads(Path(session.end_profiling()).read_text())
    totals: dict[str, float] = defaultdict(float)
    for event in trace:
        args = event.get("args", {})
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            totals[args.get("op_name", "?")] += event.get("dur", 0) / 1e3 / (calls + 1)
    return {"runner": "onnxruntime", "batch": batch, "ms_per_call": round(sum(totals.values()), 3),
            "ops": _top(totals, top)}  # fmt: skip
