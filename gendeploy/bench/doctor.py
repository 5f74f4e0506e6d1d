"""``gendeploy doctor``: what this machine can do, and which export / serve / bench paths follow.

Every probe is read-only and imports its dependency lazily; a probe that fails says why.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version

from gendeploy.errors import GendeployError
from gendeploy.export.int8 import int8_tools_missing
from gendeploy.runtime.onnxrt import providers
from gendeploy.runtime.tensorrt import tensorrt_availability
from gendeploy.serve.tritonserver import backend_names, locate_tritonserver


@dataclass(frozen=True)
class Finding:
    what: str
    ok: bool
    detail: str


@dataclass
class Report:
    facilities: list[Finding] = field(default_factory=list)
    paths: list[Finding] = field(default_factory=list)  # export / serve / bench paths

    def facility(self, what: str) -> Finding:
        return next(f for f in self.facilities if f.what == what)


def diagnose() -> Report:
    cuda = _cuda()
    trt = _tensorrt()
    providers = _ort_providers()
    ort = Finding(
        "ONNX Runtime", bool(providers), ", ".join(providers) if providers else "not installed"
    )
    openvino = _openvino()
    triton, backends = _tritonserver()
    perf = _perf_analyzer()
    report = Report(facilities=[cuda, trt, ort, openvino, triton, perf])

    engine = cuda.ok and trt.ok
    why_engine = "" if engine else (trt.detail if not trt.ok else cuda.detail)
    p = report.paths
    p.append(
        Finding("export: FP32 / uint8 / FP16 ONNX, gated with ONNX Runtime", ort.ok, ort.detail)
    )
    p.append(Finding("export: TensorRT FP16 engine (--fp16)", engine, why_engine or "available"))
    int8_missing = int8_tools_missing()
    p.append(Finding("export: INT8 (--int8, NNCF + OpenVINO)", not int8_missing, int8_missing))
    p.append(
        Finding("export: TensorRT INT8 engine (--int8)", engine and not int8_missing,
                why_engine or int8_missing or "available")
    )  # fmt: skip
    p.append(
        Finding(
            "serve: Triton python backend (ONNX Runtime inside)",
            triton.ok and ort.ok,
            triton.detail,
        )
    )
    for backend in ("onnxruntime", "tensorrt", "openvino"):
        have = backend in backends
        p.append(
            Finding(
                f"serve: Triton '{backend}' backend",
                have,
                "available" if have else "not in this tritonserver (use the NGC container)",
            )
        )
    p.append(Finding("bench: eager PyTorch" + (" (CPU + CUDA)" if cuda.ok else " (CPU)"), True, ""))
    p.append(Finding("bench: ONNX Runtime", ort.ok, ort.detail))
    p.append(Finding("bench: TensorRT engine", engine, why_engine or "available"))
    p.append(Finding("bench: OpenVINO", openvino.ok, openvino.detail))
    p.append(
        Finding("bench: served through Triton (perf_analyzer)", triton.ok and perf.ok, perf.detail)
    )
    return report


def _cuda() -> Finding:
    import torch

    if not torch.cuda.is_available():
        return Finding("CUDA", False, f"no CUDA device (torch {torch.__version__})")
    devices = []
    for i in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(i)
        devices.append(f"{i}: {torch.cuda.get_device_name(i)} (sm {major}.{minor})")
    return Finding("CUDA", True, f"CUDA {torch.version.cuda}; " + "; ".join(devices))


def _tensorrt() -> Finding:
    if importlib.util.find_spec("tensorrt") is None:
        return Finding("TensorRT", False, "tensorrt not installed")
    status = tensorrt_availability()
    try:
        import tensorrt

        detail = f"TensorRT {tensorrt.__version__}"
    except (ImportError, OSError):
        detail = status.reason
    return Finding("TensorRT", status.ok, detail if status.ok else f"{detail}: {status.reason}")


def _ort_providers() -> list[str]:
    return providers()


def _openvino() -> Finding:
    if importlib.util.find_spec("openvino") is None:
        return Finding("OpenVINO", False, "not installed (pip install 'gendeploy[openvino]')")
    return Finding("OpenVINO", True, f"openvino {_dist_version('openvino')}")


def _tritonserver() -> tuple[Finding, list[str]]:
    try:
        binary = locate_tritonserver()
    except GendeployError as e:
        return Finding("tritonserver", False, str(e)), []
    backends = backend_names(binary)
    detail = f"{binary.executable} (backends: {', '.join(backends) or 'none'})"
    return Finding("tritonserver", True, detail), backends


def _perf_analyzer() -> Finding:
    """Found where the bench looks for it (``find_perf_analyzer``), and it must run."""
    from gendeploy.bench.served import PERF_ANALYZER_ENV, find_perf_analyzer, perf_analyzer_version

    path = find_perf_analyzer()
    if path is None:
        return Finding(
            "perf_analyzer",
            False,
            f"not found: run scripts/get_perf_analyzer.sh (fetches it into the cache) or set "
            f"{PERF_ANALYZER_ENV}; the served bench falls back to a tritonclient load loop",
        )
    found = perf_analyzer_version(path)
    if found.startswith("does not run"):
        return Finding(
            "perf_analyzer", False, f"{path} {found}; re-run scripts/get_perf_analyzer.sh"
        )
    return Finding("perf_analyzer", True, f"{path} ({found})" if found else str(path))


def _dist_version(dist: str) -> str:
    try:
        return version(dist)
    except PackageNotFoundError:
        return "?"
