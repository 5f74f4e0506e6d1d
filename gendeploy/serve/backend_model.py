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

An image-to-image export (the manifest's ``image``) takes ``image`` UINT8 [N, H, W, C] or
``image_bytes`` BYTES [N, 1] (PNG or JPEG files, decoded with Pillow) and returns ``images`` UINT8
[N, scale*H, scale*W, C']: each image is checked (channels, not empty, at most ``max_megapixels``
in the request), then upscaled a tile at a time by ``tiling.py``, which ``gendeploy repo`` copies
beside this file, so memory is the output plus one batch of windows whatever the image's size.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import sys
import threading
import time
from typing import Any

import numpy as np

# served: replaced by the code of gendeploy/seeds.py (serve.repo.served_model_source)
from gendeploy.seeds import MAX_SEED, draw_latents, draw_noise


def _machine_threads() -> int:
    """The CPUs `gendeploy serve` sized for this machine (``GENDEPLOY_THREADS``: affinity and
    cgroup quota), else those this process may run on (a server started by Model Analyzer or
    in the NGC container)."""
    value = os.environ.get("GENDEPLOY_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    affinity = getattr(os, "sched_getaffinity", None)
    return len(affinity(0)) if affinity else os.cpu_count() or 1


def engine_threads(configured: int, instances: int) -> int:
    """Engine threads per instance: the config's; else the machine's CPUs (``_machine_threads``)
    shared by the model's instances, at least one each (two instances of two threads on two
    cores served 15% fewer images than of one thread each, bench/tune_instances)."""
    if configured > 0:
        return configured
    return max(1, _machine_threads() // max(instances, 1))


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


IMAGE_INPUT, IMAGE_BYTES_INPUT, IMAGE_OUTPUT = "image", "image_bytes", "images"
IMAGE_FORMATS = ("PNG", "JPEG")
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}  # what a decoded file is converted to, by channels


def parse_image_request(
    pixels: np.ndarray | None, encoded: np.ndarray | None, channels: int, max_megapixels: float
) -> np.ndarray:
    """One request's images as uint8 [N, H, W, channels]: ``image`` as sent, or ``image_bytes``
    decoded; refused (``RequestError``, one line) when empty, with other channels, over the
    megapixel limit, or not a PNG / JPEG file."""
    if (pixels is None) == (encoded is None):
        raise RequestError(
            f"send exactly one of '{IMAGE_INPUT}' (UINT8 [N, H, W, C]) or '{IMAGE_BYTES_INPUT}' "
            "(PNG or JPEG files, BYTES [N, 1])"
        )
    if pixels is not None:
        if pixels.ndim != 4:
            raise RequestError(f"'{IMAGE_INPUT}' must be UINT8 [N, H, W, C], got {pixels.shape}")
        n, h, w, c = pixels.shape
        _check_size(n, h, w, max_megapixels)
        if c != channels:
            raise RequestError(f"the image has {c} channels; this model takes {channels}")
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    assert encoded is not None
    files = [bytes(f) for f in encoded.reshape(-1)]
    if not files:
        raise RequestError(f"'{IMAGE_BYTES_INPUT}' holds no file")
    images = [_decode(f, i, channels, max_megapixels) for i, f in enumerate(files)]
    if len({a.shape for a in images}) > 1:
        sizes = ", ".join(f"{a.shape[1]} x {a.shape[0]}" for a in images)
        raise RequestError(f"the request's images differ in size ({sizes}): send one a request")
    _check_size(len(images), images[0].shape[0], images[0].shape[1], max_megapixels)
    return np.stack(images)


def _check_size(n: int, h: int, w: int, max_megapixels: float) -> None:
    if n < 1 or h < 1 or w < 1:
        raise RequestError(f"the image is empty ({w} x {h} pixels, {n} images)")
    megapixels = n * h * w / 1e6
    if megapixels > max_megapixels:
        held = f"{n} images of " if n > 1 else ""
        raise RequestError(
            f"the request's {held}{w} x {h} pixels ({megapixels:.2f} megapixels) are over this "
            f"model's limit of {max_megapixels:g} megapixels a request"
        )


def _decode(data: bytes, index: int, channels: int, max_megapixels: float) -> np.ndarray:
    """A PNG or JPEG file as uint8 [H, W, channels]; its size is checked before it is decoded."""
    try:
        from PIL import Image
    except ImportError:
        raise RequestError(
            f"this server's Python has no Pillow to decode '{IMAGE_BYTES_INPUT}'; send "
            f"'{IMAGE_INPUT}' (UINT8 [N, H, W, C])"
        ) from None
    if channels not in _MODES:
        raise RequestError(f"this model takes {channels} channels: send '{IMAGE_INPUT}'")
    what = f"'{IMAGE_BYTES_INPUT}'[{index}]"
    try:
        with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as opened:
            _check_size(1, opened.height, opened.width, max_megapixels)
            image = np.asarray(opened.convert(_MODES[channels]))
    except RequestError:
        raise
    except Image.DecompressionBombError:  # larger than Pillow itself will decode
        raise RequestError(
            f"{what} is over this model's limit of {max_megapixels:g} megapixels"
        ) from None
    except Exception as e:  # Pillow's errors for files that are not, or not whole, images
        detail = " ".join(str(e).split())[:120]
        raise RequestError(
            f"{what} is not a PNG or JPEG file Pillow can decode ({detail})"
        ) from None
    return image.reshape(image.shape[0], image.shape[1], channels)


def load_sibling(version_dir: str, name: str) -> Any:
    """``name``.py of the served version directory (``tiling.py``), imported by path: the served
    code is what ``gendeploy repo`` wrote, whatever gendeploy is installed beside the server."""
    module_name = f"gendeploy_served_{name}"
    spec = importlib.util.spec_from_file_location(
        module_name, os.path.join(version_dir, f"{name}.py")
    )
    if spec is None or spec.loader is None:
        raise RuntimeError(f"{name}.py is missing from {version_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class ImageServer:
    """The image-to-image side of the served model: checks, tiles, runs ``engine``, renders."""

    def __init__(
        self, image: dict[str, Any], engine: Any, params: dict[str, str], tiling: Any
    ) -> None:
        tile = image["tile"]
        self.tiling = tiling
        self.geometry = tiling.Geometry(
            scale=int(image["scale"]),
            size_multiple=int(image["size_multiple"]),
            min_side=int(image["min_side"]),
            tile=int(tile["size"]),
            margin=int(tile["margin"]),
            tiled=bool(tile["tiled"]),
        )
        self.channels = int(image["in_channels"])
        self.out_channels = int(image["out_channels"])
        self.engine = engine
        self.max_megapixels = float(params.get("max_megapixels", "4.2"))
        self.tile_batch = max(1, int(params.get("tile_batch", "4")))
        self.input_name = params.get("image_input", "input_images")

    def _model(self, windows: np.ndarray) -> np.ndarray:
        return self.engine.run({self.input_name: np.ascontiguousarray(windows, np.float32)})

    def run(self, pixels: np.ndarray | None, encoded: np.ndarray | None) -> np.ndarray:
        """One request: uint8 [N, scale*H, scale*W, out_channels]."""
        images = parse_image_request(pixels, encoded, self.channels, self.max_megapixels)
        n, h, w, _ = images.shape
        refused = self.geometry.refusal(h, w)
        if refused:
            raise RequestError(refused)
        s = self.geometry.scale

        def one(image: np.ndarray) -> np.ndarray:
            return self.tiling.upscale(image, self._model, self.geometry, batch=self.tile_batch)

        if n == 1:  # no second copy of the (largest) output
            return np.ascontiguousarray(one(images[0]))[None]
        out = np.empty((n, h * s, w * s, self.out_channels), np.uint8)
        for i, image in enumerate(images):
            out[i] = one(image)
        return out


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
ENGINE_METRIC = "gendeploy_engine_seconds_total"
EXECUTE_METRIC = "gendeploy_execute_seconds_total"


def _counter(
    pb_utils: Any, name: str, description: str, model: str, version: str
) -> tuple[Any, Any] | None:
    """(family, counter): a Prometheus counter of this model. Both are kept: a counter whose
    family was deleted stops counting. None where the python backend has no custom metrics."""
    family_type = getattr(pb_utils, "MetricFamily", None)  # python backend >= 23.05
    if family_type is None:
        return None
    family = family_type(name=name, description=description, kind=family_type.COUNTER)
    return family, family.Metric(labels={"model": model, "version": version})


def _refused_counter(pb_utils: Any, model: str, version: str) -> tuple[Any, Any] | None:
    """The requests this model refused (INVALID_ARG), which Triton's own statistics count as
    successes."""
    what = "Requests refused by gendeploy's checks (each got INVALID_ARG)"
    return _counter(pb_utils, REFUSED_METRIC, what, model, version)


class _Timing:
    """Seconds spent in ``execute`` and, of those, in the engine, as two counters: what a batch
    costs inside the model against what Triton counts as its compute (docs/served-path.md).

    Each increment is a round trip to Triton's process, so the seconds are summed here and sent
    by a thread every ``FLUSH_S`` (the counters are never further behind than that)."""

    FLUSH_S = 0.5

    def __init__(self, pb_utils: Any, model: str, version: str) -> None:
        self.engine = _counter(pb_utils, ENGINE_METRIC, "Seconds in the engine", model, version)
        self.execute = _counter(
            pb_utils, EXECUTE_METRIC, "Seconds in the python model's execute", model, version
        )
        self.pending = [0.0, 0.0]  # engine, execute seconds not sent yet
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="gendeploy-timing", daemon=True)
        if self.engine is not None:
            self.thread.start()

    def add(self, engine_s: float, execute_s: float) -> None:
        with self.lock:
            self.pending[0] += engine_s
            self.pending[1] += execute_s

    def _run(self) -> None:
        while not self.stop.wait(self.FLUSH_S):
            self.flush()

    def flush(self) -> None:
        with self.lock:
            (engine_s, execute_s), self.pending = self.pending, [0.0, 0.0]
        if execute_s and self.engine is not None and self.execute is not None:
            self.engine[1].increment(engine_s)
            self.execute[1].increment(execute_s)

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()
        self.engine = self.execute = None  # each counter, then its family


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
        instances = sum(int(g.get("count", 1)) for g in config.get("instance_group", [])) or 1
        threads = engine_threads(int(params.get("intra_op_threads", "0")), instances)
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
        self.timing = _Timing(pb_utils, config["name"], args["model_version"])
        self.image: ImageServer | None = None
        if manifest.get("image"):
            tiling = load_sibling(version_dir, "tiling")
            self.image = ImageServer(manifest["image"], self.engine, params, tiling)

    @staticmethod
    def _inputs(request: Any) -> dict[str, np.ndarray]:
        """The request's tensors by name, listed once (``pb_utils.get_input_tensor_by_name``
        lists them all again for every name asked for)."""
        return {t.name(): t.as_numpy() for t in request.inputs()}

    def execute(self, requests: list[Any]) -> list[Any]:
        if self.image is not None:
            return [self._image_response(request) for request in requests]
        pb = self.pb
        started = time.perf_counter()
        engine_s = 0.0
        parsed: list[tuple[np.ndarray, np.ndarray | None, dict[str, np.ndarray]] | str] = []
        for request in requests:
            try:
                tensors = self._inputs(request)
                seed = tensors.get("seed")
                z, labels = parse_request(
                    tensors.get("z"),
                    seed,
                    tensors.get("labels"),
                    self.latent_dim,
                    self.num_classes,
                )
                extras = parse_extras(
                    tensors.get("truncation"),
                    tensors.get("noise_seed"),
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
            engine_started = time.perf_counter()
            images = self.engine.run(feeds)
            engine_s = time.perf_counter() - engine_started
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
        self.timing.add(engine_s, time.perf_counter() - started)
        return responses

    def _image_response(self, request: Any) -> Any:
        """Each image request runs on its own (its images tiled): sizes differ between requests."""
        pb = self.pb
        assert self.image is not None
        try:
            inputs = self._inputs(request)
            out = self.image.run(inputs.get(IMAGE_INPUT), inputs.get(IMAGE_BYTES_INPUT))
        except RequestError as e:
            if self.refused is not None:
                self.refused[1].increment(1)
            error = pb.TritonError(str(e), pb.TritonError.INVALID_ARG)
            return pb.InferenceResponse(output_tensors=[], error=error)
        return pb.InferenceResponse(output_tensors=[pb.Tensor(IMAGE_OUTPUT, out)])

    def finalize(self) -> None:
        self.timing.close()
        self.engine = None
        self.refused = None  # the counter, then its family (the order the backend wants)
