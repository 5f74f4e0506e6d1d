"""ONNX (already FP16, FP32 I/O) -> serialized TensorRT engine, the way that works on TRT 10 and 11.

TensorRT 10.12 deprecated the weakly typed precision flags and 11.x removed ``BuilderFlag.FP16``:
the precision lives in the ONNX graph (see ``onnx_graph.convert_fp16``) and the network is created
STRONGLY_TYPED (required on 10.x, accepted and ignored on 11.x where strong typing is always on).
The INT8 engine comes from the QDQ ONNX the same way: TensorRT sees the Q/DQ pairs and builds with
explicit quantization, which its documentation pairs with strong typing and no precision flags
(the quantized layers run INT8 where the Q/DQ say so, the rest in the graph's float types).
One optimization profile covers batch 1..max (max = Triton's ``max_batch_size``). The timing
cache is persisted per GPU and TensorRT version so rebuilds skip kernel timing. Written from the
documented Python API; run only where TensorRT and a CUDA device exist (tests marked ``gpu``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from gendeploy.errors import EngineBuildError
from gendeploy.fileio import atomic_write, cache_dir
from gendeploy.manifest import TensorSpec
from gendeploy.runtime.tensorrt import import_tensorrt

log = logging.getLogger(__name__)

WORKSPACE_BYTES = 2 << 30


def gpu_facts() -> dict[str, str]:
    import torch

    major, minor = torch.cuda.get_device_capability()
    trt = import_tensorrt()
    return {
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
        "tensorrt": trt.__version__,
        "cuda": str(torch.version.cuda),
    }


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    inputs: list[TensorSpec],
    min_batch: int,
    opt_batch: int,
    max_batch: int,
) -> dict[str, Any]:
    """Build and write the engine; returns the facts to record in the artifact's ``extra``."""
    trt = import_tensorrt()
    facts: dict[str, Any] = gpu_facts()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strongly_typed is not None:
        flags |= 1 << int(strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT cannot parse {onnx_path.name}: {errors[:300]}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    # per-layer datatypes in the engine: the engine inspector reads back what really runs INT8
    config.profiling_verbosity = trt.ProfilingVerbosity.DETAILED
    profile = builder.create_optimization_profile()
    try:
        for spec in inputs:
            rest = tuple(spec.shape[1:])
            shapes = (min_batch, *rest), (opt_batch, *rest), (max_batch, *rest)
            profile.set_shape(spec.name, *shapes)
    except RuntimeError as e:  # TensorRT rejects inconsistent min/opt/max shapes
        raise EngineBuildError(
            f"TensorRT refused the batch profile for {onnx_path.name}: {e}"
        ) from None
    if config.add_optimization_profile(profile) < 0:
        raise EngineBuildError(
            f"TensorRT refused the batch profile {min_batch}/{opt_batch}/{max_batch} for "
            f"{onnx_path.name}"
        )

    cache_path = cache_dir() / "tensorrt" / _cache_name(facts)
    _use_timing_cache(config, cache_path)

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(
            f"TensorRT failed to build an engine from {onnx_path.name} (see log above)"
        )
    engine_path.write_bytes(bytes(serialized))

    cache = bytes(config.get_timing_cache().serialize())
    atomic_write(cache_path, lambda f: f.write(cache))  # unique temp file: parallel builds are safe
    facts.update(
        # TensorRT 11 networks are always strongly typed (the flag is accepted and ignored)
        strongly_typed=strongly_typed is not None or int(trt.__version__.split(".")[0]) >= 11,
        profile={"min": min_batch, "opt": opt_batch, "max": max_batch},
        timing_cache=str(cache_path),
        source_onnx=onnx_path.name,
    )
    return facts


def _use_timing_cache(config: Any, cache_path: Path) -> None:
    """Load the persisted timing cache; a stale or corrupt one is replaced by a fresh cache."""
    saved = cache_path.read_bytes() if cache_path.is_file() else b""
    cache = config.create_timing_cache(saved) if saved else None
    # ignore_mismatch=False: a cache from another device or TensorRT is rejected (returns False)
    if cache is not None and config.set_timing_cache(cache, False):
        return
    if saved:
        log.warning("TensorRT rejected the timing cache %s; starting a fresh one", cache_path)
    if not config.set_timing_cache(config.create_timing_cache(b""), False):
        raise EngineBuildError("TensorRT refused a fresh timing cache")


def _cache_name(facts: dict[str, Any]) -> str:
    gpu = "".join(c if c.isalnum() else "_" for c in facts["gpu"])
    return f"timing_{gpu}_sm{facts['compute_capability']}_trt{facts['tensorrt']}.cache"
