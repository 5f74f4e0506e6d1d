"""Triton python-backend model serving one gendeploy export; copied as ``<version>/model.py``.

It is self-contained (numpy + onnxruntime, TensorRT when importable) so it serves in any Triton with
the python backend, including the NGC container where gendeploy is not installed. It reads the
exported ONNX (``model.onnx``), optionally a TensorRT engine (``model.plan``) and the export's
``manifest.json`` from its own version directory. An INT8 model (``runtime: openvino``) runs its
QDQ ONNX (or ``model.xml`` IR) with OpenVINO, the runtime its export gated it on, which executes
it in INT8; where ``openvino`` does not import in the stub's environment it runs on ONNX Runtime
only if the export gated it there too (``onnxruntime_gated``), else the model refuses to load
(``choose_backend``): an INT8 graph's images and batch invariance depend on the runtime.

Every request of a dynamic batch is validated on its own (a bad request gets its own
INVALID_ARGUMENT error; the others still run), then all valid requests run as ONE batch.

Inputs: ``z`` FP32 [N, latent] or ``seed`` INT64 [N, 1] (exactly one of them) and, for conditional
models, ``labels`` INT64 [N, 1]. With ``seed`` the server draws z with :func:`draw_latents`, which
clients use too, so "image 42" is the same image everywhere.

Exports whose generator takes more (the manifest's ``interface``): ``truncation`` FP32 [N, 1],
optional, the model's default where left out, within the manifest's ``truncation_range`` (the
psi the export's gate ran it at; outside it a request is refused); and, for per-sample
noise (``--noise seeded``), the noise each image gets is drawn from its seed with
:func:`draw_noise`, or from ``noise_seed`` INT64 [N, 1] when the request sends z.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

# served: replaced by the code of gendeploy/seeds.py (serve.repo.served_model_source)
from gendeploy.seeds import MAX_SEED, draw_latents, draw_noise


def _env_threads() -> int:
    value = os.environ.get("GENDEPLOY_THREADS", "").strip()
    return int(value) if value.isdigit() else 0


class RequestError(ValueError):
    """A request that cannot run: becomes that request's INVALID_ARGUMENT response."""


def parse_request(
    z: np.ndarray | None,
    seed: np.ndarray | None,
    labels: np.ndarray | None,
    latent_dim: int,
    num_classes: int,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Check one request's tensors and return (z (N, latent) float32, labels (N,) int64 or None)."""
    if (z is None) == (seed is None):
        raise RequestError("send exactly one of 'z' (FP32 [N, latent]) or 'seed' (INT64 [N, 1])")
    if seed is not None:
        seeds = seed.reshape(-1)
        if seeds.size and (seeds.min() < 0):
            raise RequestError(f"seed must be in [0, {MAX_SEED}], got {int(seeds.min())}")
        z = draw_latents(seeds, latent_dim)
    assert z is not None
    z = np.ascontiguousarray(z, dtype=np.float32).reshape(-1, latent_dim)
    if not np.isfinite(z).all():
        raise RequestError("z contains NaN or Inf; send finite latents")
    if num_classes <= 0:
        return z, None
    if labels is None:
        raise RequestError("this model is conditional: send 'labels' (INT64 [N, 1])")
    flat = labels.reshape(-1).astype(np.int64)
    if flat.shape[0] != z.shape[0]:
        raise RequestError(f"labels has batch {flat.shape[0]} but z has batch {z.shape[0]}")
    if flat.size and (flat.min() < 0 or flat.max() >= num_classes):
        bad = int(flat[(flat < 0) | (flat >= num_classes)][0])
        raise RequestError(f"label {bad} is out of range [0, {num_classes - 1}]")
    return z, flat


def parse_extras(
    truncation: np.ndarray | None,
    noise_seed: np.ndarray | None,
    seed: np.ndarray | None,
    n: int,
    interface: dict[str, Any],
) -> dict[str, np.ndarray]:
    """The inputs beyond z and labels that the export's generator takes (see the module doc)."""
    feeds: dict[str, np.ndarray] = {}
    if interface.get("truncation_arg"):
        if truncation is None:
            psi = np.full(n, float(interface.get("truncation_default", 1.0)), np.float32)
        else:
            psi = np.asarray(truncation, np.float32).reshape(-1)
            if psi.shape[0] != n:
                raise RequestError(f"truncation has batch {psi.shape[0]} but z has batch {n}")
            if not np.isfinite(psi).all():
                raise RequestError("truncation contains NaN or Inf; send finite values")
            # refused rather than clamped: a clamped psi would return another image than asked
            judged = interface.get("truncation_range") or [-np.inf, np.inf]
            lo, hi = float(judged[0]), float(judged[1])
            if psi.size and (psi.min() < lo or psi.max() > hi):
                bad = float(psi[(psi < lo) | (psi > hi)][0])
                raise RequestError(
                    f"truncation {bad:g} is out of range [{lo:g}, {hi:g}], the psi this export "
                    "was checked at; send a value within it"
                )
        feeds["truncation"] = psi.reshape(n, 1)
    noise = interface.get("noise") or []
    if noise:
        seeds = noise_seed if noise_seed is not None else seed
        if seeds is None:
            raise RequestError(
                "this model draws each image's noise from a seed: send 'seed', or 'noise_seed' "
                "(INT64 [N, 1]) with 'z'"
            )
        seeds = seeds.reshape(-1)
        if seeds.shape[0] != n:
            raise RequestError(f"noise_seed has batch {seeds.shape[0]} but z has batch {n}")
        if seeds.size and seeds.min() < 0:
            raise RequestError(f"noise_seed must be in [0, {MAX_SEED}], got {int(seeds.min())}")
        drawn = draw_noise(seeds, [list(item["shape"]) for item in noise])
        feeds.update({item["name"]: a for item, a in zip(noise, drawn, strict=True)})
    return feeds


ORT_SPINNING = "session.intra_op.allow_spinning"


class _OrtEngine:
    def __init__(self, path: str, gpu: bool, threads: int) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads > 0:
            options.intra_op_num_threads = threads
        # a waiting worker thread sleeps instead of spinning: the server shares the cores with
        # Triton's own threads and its clients, and on a 2-core machine spinning workers stalled
        # requests by 100 ms and more (perf_analyzer then finds no stable window)
        options.add_session_config_entry(ORT_SPINNING, "0")
        providers = ["CPUExecutionProvider"]
        if gpu and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self.session = ort.InferenceSession(path, options, providers=providers)
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_name = self.session.get_outputs()[0].name

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {k: v for k, v in feeds.items() if k in self.input_names}
        return np.asarray(self.session.run([self.output_name], feeds)[0])


class _OpenVinoEngine:
    """OpenVINO on CPU: the engine that runs a QDQ model's quantized layers in INT8."""

    def __init__(self, path: str, threads: int) -> None:
        import openvino as ov

        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads
        self.compiled = ov.Core().compile_model(path, "CPU", config)
        # every name of every input: OpenVINO may give a tensor several (fused ones merge them)
        self.input_names = {n for p in self.compiled.inputs for n in p.get_names()}
        self.request = self.compiled.create_infer_request()

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        self.request.infer({k: v for k, v in feeds.items() if k in self.input_names})
        return np.array(self.request.get_output_tensor(0).data, copy=True)


def _openvino_unusable() -> str | None:
    try:
        import openvino  # noqa: F401
    except Exception as e:  # ImportError, or a broken install
        return f"openvino does not import: {e}"
    return None


class TrtEngine:
    """A TensorRT engine run with TensorRT 10/11's tensor-name API; buffers are torch tensors."""

    def __init__(self, path: str, device_id: int) -> None:
        import tensorrt as trt
        import torch

        self.torch = torch
        torch.cuda.set_device(device_id)
        # its own stream: TensorRT synchronises around every call on the legacy default stream
        self.stream = torch.cuda.Stream()
        # kept as attributes: the runtime must outlive the engine it deserialized
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        with open(path, "rb") as f:
            self.engine = self.runtime.deserialize_cuda_engine(f.read())
        if self.engine is None:
            raise RuntimeError(f"TensorRT could not deserialize {path}")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        mode = trt.TensorIOMode.INPUT
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == mode]
        self.output = next(n for n in names if self.engine.get_tensor_mode(n) != mode)
        # float32 / float16 / uint8 / int64 ...: numpy's name is torch's
        self.dtypes = {
            n: getattr(torch, np.dtype(trt.nptype(self.engine.get_tensor_dtype(n))).name)
            for n in names
        }

    def run(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        torch = self.torch
        keep = []  # device inputs must outlive the asynchronous execution
        with torch.cuda.stream(self.stream):
            for name in self.inputs:
                host = torch.from_numpy(np.ascontiguousarray(feeds[name]))
                t = host.to("cuda", self.dtypes[name])
                keep.append(t)
                if not self.context.set_input_shape(name, tuple(t.shape)):
                    shape = tuple(t.shape)
                    raise RuntimeError(f"TensorRT refused {name!r} of shape {shape} (profile)")
                self.context.set_tensor_address(name, t.data_ptr())
            shape = tuple(self.context.get_tensor_shape(self.output))
            out = torch.empty(shape, dtype=self.dtypes[self.output], device="cuda")
            self.context.set_tensor_address(self.output, out.data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed")
            self.stream.synchronize()
        return out.cpu().numpy()


def _tensorrt_unusable() -> str | None:
    """Why this instance cannot run the engine (None: it can)."""
    try:
        import tensorrt  # noqa: F401
        import torch
    except Exception as e:  # ImportError, or OSError from a wheel without its libraries
        return f"tensorrt does not import: {e}"
    return None if torch.cuda.is_available() else "torch sees no CUDA device"


def choose_backend(
    runtime: str,
    has_engine: bool,
    tensorrt_problem: str | None,
    openvino_problem: str | None,
    onnxruntime_gated: bool = False,
) -> tuple[str, str]:
    """(backend, why not the preferred one) for a model whose manifest runtime is ``runtime``:
    its TensorRT engine on a GPU instance where TensorRT runs, else OpenVINO for an ``openvino``
    model, else ONNX Runtime. An ``openvino`` model OpenVINO cannot run here runs on ONNX Runtime
    only if its export gated it there too (``onnxruntime_gated``), else it is refused (a
    RuntimeError: Triton does not load it)."""
    if has_engine and tensorrt_problem is None:
        return "tensorrt", ""
    if runtime == "openvino" and not has_engine:
        if openvino_problem is not None and onnxruntime_gated:
            return "onnxruntime", (
                f"instead of OpenVINO ({openvino_problem}): its export gated it on ONNX Runtime too"
            )
        if openvino_problem is not None:
            raise RuntimeError(
                f"its INT8 model was gated on OpenVINO, which cannot run here ({openvino_problem})"
                ": install openvino in the python backend's environment (pip install openvino); "
                "ONNX Runtime, never gated on it, is not used instead"
            )
        return "openvino", ""
    return (
        "onnxruntime",
        f"instead of its TensorRT engine ({tensorrt_problem})" if has_engine else "",
    )


REFUSED_METRIC = "gendeploy_refused_requests_total"


def _refused_counter(pb_utils: Any, model: str, version: str) -> tuple[Any, Any] | None:
    """(family, counter): a Prometheus counter of the requests this model refused (INVALID_ARG),
    which Triton's own statistics count as successes. Both are kept: a counter whose family was
    deleted stops counting. None where the python backend has no custom metrics."""
    family_type = getattr(pb_utils, "MetricFamily", None)  # python backend >= 23.05
    if family_type is None:
        return None
    family = family_type(
        name=REFUSED_METRIC,
        description="Requests refused by gendeploy's checks (each got INVALID_ARG)",
        kind=family_type.COUNTER,
    )
    return family, family.Metric(labels={"model": model, "version": version})


class TritonPythonModel:
    """The model Triton's python backend instantiates once per instance."""

    def initialize(self, args: dict[str, str]) -> None:
        import triton_python_backend_utils as pb_utils

        self.pb = pb_utils
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "manifest.json")) as f:
            manifest = json.load(f)
        self.latent_dim = int(manifest["latent_dim"])
        self.num_classes = int(manifest["num_classes"])
        self.interface = manifest.get("interface") or {}
        self.output_name = config["output"][0]["name"]
        gpu = args.get("model_instance_kind") == "GPU"
        engine_path = os.path.join(version_dir, params.get("engine_file", "model.plan"))
        self.engine: Any
        has_engine = gpu and os.path.isfile(engine_path)
        runtime = params.get("runtime", "")
        try:
            self.backend, note = choose_backend(
                runtime,
                has_engine,
                _tensorrt_unusable() if has_engine else None,
                _openvino_unusable() if runtime == "openvino" and not has_engine else None,
                params.get("onnxruntime_gated") == "true",
            )
        except RuntimeError as e:
            raise RuntimeError(f"gendeploy: {config['name']}: {e}") from None
        # the config's, else what `gendeploy serve` sized for this machine (gendeploy.cpus)
        threads = int(params.get("intra_op_threads", "0")) or _env_threads()
        ir_path = os.path.join(version_dir, params.get("openvino_file", "model.xml"))
        onnx_path = os.path.join(version_dir, params.get("onnx_file", "model.onnx"))
        if self.backend == "tensorrt":
            self.engine = TrtEngine(engine_path, int(args.get("model_instance_device_id", "0")))
        elif self.backend == "openvino":
            path = ir_path if os.path.isfile(ir_path) else onnx_path
            self.engine = _OpenVinoEngine(path, threads)
        else:
            self.engine = _OrtEngine(onnx_path, gpu, threads)
        logger = getattr(pb_utils, "Logger", None)  # python backend >= 22.x
        if logger is not None:
            log = logger.log_warn if note else logger.log_info
            log(f"gendeploy: {config['name']} runs on {self.backend}{' ' + note if note else ''}")
        self.refused = _refused_counter(pb_utils, config["name"], args["model_version"])

    def _tensor(self, request: Any, name: str) -> np.ndarray | None:
        t = self.pb.get_input_tensor_by_name(request, name)
        return None if t is None else t.as_numpy()

    def execute(self, requests: list[Any]) -> list[Any]:
        pb = self.pb
        parsed: list[tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]] | str] = []
        for request in requests:
            try:
                seed = self._tensor(request, "seed")
                z, labels = parse_request(
                    self._tensor(request, "z"),
                    seed,
                    self._tensor(request, "labels"),
                    self.latent_dim,
                    self.num_classes,
                )
                extras = parse_extras(
                    self._tensor(request, "truncation"),
                    self._tensor(request, "noise_seed"),
                    seed,
                    z.shape[0],
                    self.interface,
                )
                parsed.append((z, labels, extras))
            except RequestError as e:
                parsed.append(str(e))
                if self.refused is not None:
                    self.refused[1].increment(1)
        valid = [p for p in parsed if not isinstance(p, str)]
        images = np.zeros((0,))
        if valid:
            feeds = {"z": np.concatenate([p[0] for p in valid])}
            if self.num_classes > 0:
                feeds["labels"] = np.concatenate([p[1] for p in valid if p[1] is not None])
            for key in valid[0][2]:
                feeds[key] = np.concatenate([p[2][key] for p in valid])
            images = self.engine.run(feeds)
        responses, start = [], 0
        for p in parsed:
            if isinstance(p, str):
                error = pb.TritonError(p, pb.TritonError.INVALID_ARG)
                responses.append(pb.InferenceResponse(output_tensors=[], error=error))
                continue
            n = p[0].shape[0]
            out = pb.Tensor(self.output_name, np.ascontiguousarray(images[start : start + n]))
            responses.append(pb.InferenceResponse(output_tensors=[out]))
            start += n
        return responses

    def finalize(self) -> None:
        self.engine = None
        self.refused = None  # the counter, then its family (the order the backend wants)
