"""Where the time goes: per-operator shares for eager PyTorch (torch.profiler) and ONNX Runtime
(its own node profiler), so a missed goal comes with its explanation."""

from __future__ import annotations

import contextlib
import json
import os
import sys
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gendeploy.bench.results import LayerProfile, LayerTime, OpTime, ProfileRecord
from gendeploy.bench.sweep import make_feeds


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Kineto prints start/stop lines straight to fd 2; keep the bench log readable."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _top(totals: dict[str, float], top: int) -> list[OpTime]:
    whole = sum(totals.values()) or 1.0
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [OpTime(k, round(v, 3), round(v / whole, 3)) for k, v in ranked]


def profile_eager(
    module: nn.Module, latent_dim: int, num_classes: int, batch: int, calls: int = 5, top: int = 6
) -> ProfileRecord:
    """Self CPU time per aten op over ``calls`` forward passes, per call."""
    from torch.profiler import ProfilerActivity, profile

    feeds = make_feeds(batch, latent_dim, num_classes)
    args = [torch.from_numpy(v) for v in feeds.values()]
    with torch.inference_mode():
        module(*args)
        with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(calls):
                module(*args)
    totals = {
        e.key: e.self_cpu_time_total / 1e3 / calls
        for e in prof.key_averages()
        if e.self_cpu_time_total > 0
    }
    return ProfileRecord("eager", batch, round(sum(totals.values()), 3), _top(totals, top))


def profile_onnxruntime(
    model_path: Path,
    latent_dim: int,
    num_classes: int,
    batch: int,
    threads: int,
    calls: int = 5,
    top: int = 6,
) -> ProfileRecord:
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
    nodes: dict[str, float] = defaultdict(float)
    for event in trace:
        args = event.get("args", {})
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            ms = event.get("dur", 0) / 1e3 / (calls + 1)
            totals[args.get("op_name", "?")] += ms
            nodes[event["name"].removesuffix("_kernel_time")] += ms
    ms_per_call = round(sum(totals.values()), 3)
    return ProfileRecord("onnxruntime", batch, ms_per_call, _top(totals, top), _top(nodes, top))


def layer_profile(
    module: nn.Module, latent_dim: int, num_classes: int, batch: int, calls: int = 10
) -> LayerProfile:
    """Eager time and achieved GFLOP/s of each convolution / linear layer (forward hooks)."""
    import time

    from gendeploy.bench.flops import count_flops

    feeds = make_feeds(batch, latent_dim, num_classes)
    args = [torch.from_numpy(v) for v in feeds.values()]
    layers = {
        name: m
        for name, m in module.named_modules()
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d | nn.Linear)
    }
    spent: dict[str, float] = defaultdict(float)
    flops: dict[str, int] = {}
    shapes: dict[str, str] = {}
    started: dict[str, float] = {}

    def before(name: str) -> Any:
        return lambda _m, _inp: started.__setitem__(name, time.perf_counter())

    def after(name: str) -> Any:
        def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            spent[name] += time.perf_counter() - started[name]
            if name not in flops:
                flops[name] = -1  # counting runs this layer again: do not recurse
                flops[name] = count_flops(m, inp)
                shapes[name] = f"{list(inp[0].shape[1:])} -> {list(out.shape[1:])}"

        return hook

    handles = [m.register_forward_pre_hook(before(n)) for n, m in layers.items()]
    handles += [m.register_forward_hook(after(n)) for n, m in layers.items()]
    try:
        with torch.inference_mode():
            module(*args)  # counts FLOPs (and warms up)
            spent.clear()
            for _ in range(calls):
                module(*args)
    finally:
        for h in handles:
            h.remove()
    rows = []
    for name in layers:
        ms = spent[name] / calls * 1e3
        rate = flops[name] / (ms / 1e3) / 1e9 if ms > 0 else 0.0
        rows.append(LayerTime(name, shapes.get(name, ""), round(ms, 3),
                              round(flops[name] / 1e6, 1), round(rate, 1)))  # fmt: skip
    return LayerProfile("eager", batch, rows)
