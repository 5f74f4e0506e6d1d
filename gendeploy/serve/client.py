"""``gendeploy generate``: ask a served model for N images and write a PNG grid."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gendeploy.errors import ServeError, UsageError
from gendeploy.manifest import PLAN
from gendeploy.runtime.triton import TritonRunner, as_inference_error, connect
from gendeploy.seeds import MAX_SEED, draw_latents
from gendeploy.serve.readyfile import DEFAULT_PORTS, read_state, running_servers


@dataclass(frozen=True)
class ModelInfo:
    name: str
    latent_dim: int
    num_classes: int
    accepts_seed: bool
    output: str
    max_batch_size: int
    accepts_truncation: bool = False
    draws_noise: bool = False  # per-image noise from the seed (``noise_seed`` with z)


def find_server(
    url: str | None, ready_file: Path | None, protocol: str, wait_s: float = 0.0
) -> tuple[str, list[str] | None]:
    """(URL, its models where known): ``--ready-file``, else ``--url``, else the one running
    `gendeploy serve` of this user (its state file), else Triton's default port."""
    if url is not None and ready_file is not None:
        raise UsageError("pass --url or --ready-file, not both")
    if ready_file is not None:
        state = read_state(ready_file, wait_s)
        return state.url(protocol), state.models
    running = running_servers()
    if url is not None:
        same = [s for s in running if url.removeprefix("http://") in (s.http, s.grpc)]
        return url, same[0].models if same else None
    if len(running) > 1:
        ports = ", ".join(s.http or s.grpc for s in running)
        raise UsageError(f"{len(running)} `gendeploy serve` are running ({ports}): pass --url")
    if running:
        return running[0].url(protocol), running[0].models
    default = DEFAULT_PORTS[0] if protocol == "http" else DEFAULT_PORTS[1]
    return f"127.0.0.1:{default}", None


def _ready_models(client: Any, protocol: str, url: str) -> list[str]:
    from tritonclient.utils import InferenceServerException

    try:
        index = client.get_model_repository_index()
    except InferenceServerException as e:
        if not _restricted(client, e):
            raise
        raise UsageError(
            f"pass --model: the server at {url} lists its models only with its admin key"
        ) from None
    if protocol == "grpc":
        entries = [{"name": m.name, "state": m.state} for m in index.models]
    else:
        entries = list(index)
    return sorted({e["name"] for e in entries if e.get("state") == "READY"})


def _restricted(client: Any, e: Any) -> bool:
    """The server is up but keeps its repository index behind the admin key: HTTP says 403;
    gRPC says UNAVAILABLE, as for a server that is down, so it is asked whether it is live."""
    from tritonclient.utils import InferenceServerException

    status = str(e.status())
    if status == "403":
        return True
    if status != "StatusCode.UNAVAILABLE":
        return False
    try:
        return bool(client.is_server_live())
    except InferenceServerException:
        return False


def pick_model(models: list[str]) -> str:
    """The one python-backend float model, when the repo serves exactly one export."""
    plain = [m for m in models if not m.endswith(PLAN.model_suffixes())]
    if len(plain) == 1:
        return plain[0]
    raise UsageError(f"pass --model: the server has {models or 'no ready models'}")


def model_info(
    url: str, model: str | None, protocol: str = "http", served_models: list[str] | None = None
) -> ModelInfo:
    """Read a served model's config (written by ``gendeploy repo``): latent size, classes, IO.
    ``served_models`` (from the server's state file) spares asking the locked repository index
    and names the choices when ``model`` is wrong."""
    from tritonclient.utils import InferenceServerException

    client = connect(url, protocol)
    name = model or "repository"
    try:
        if model is None:
            models = served_models or _ready_models(client, protocol, url)
            name = pick_model(models)
        elif served_models is not None and model not in served_models:
            raise UsageError(f"model {model!r} is not served at {url}; it has {served_models}")
        config = client.get_model_config(name)
    except InferenceServerException as e:
        raise as_inference_error(e, name) from None
    except OSError as e:
        raise ServeError(
            f"cannot reach Triton at {url} ({e}); is `gendeploy serve` running?"
        ) from None
    finally:
        client.close()
    if protocol == "grpc":
        from google.protobuf import json_format

        config = json_format.MessageToDict(config.config, preserving_proto_field_name=True)
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    if "latent_dim" not in params:
        raise ServeError(f"model {name!r} was not written by `gendeploy repo` (no latent_dim)")
    inputs = {i["name"] for i in config.get("input", [])}
    return ModelInfo(
        name=name,
        latent_dim=int(params["latent_dim"]),
        num_classes=int(params.get("num_classes", "0")),
        accepts_seed="seed" in inputs,
        output=config["output"][0]["name"],
        max_batch_size=int(config.get("max_batch_size", 0)),
        accepts_truncation="truncation" in inputs,
        draws_noise="noise_seed" in inputs,
    )


def generate(
    url: str,
    model: str | None = None,
    n: int = 16,
    *,
    protocol: str = "http",
    label: int | None = None,
    seed: int = 0,
    client_latents: bool = False,
    served_models: list[str] | None = None,
    truncation: float | None = None,
) -> tuple[np.ndarray, ModelInfo]:
    """N images for seeds ``seed .. seed+n-1``; labels cycle through the classes unless ``label``.
    Requests are at most the model's ``max_batch_size`` each.

    The server draws z from the seeds (python-backend models); with ``client_latents`` (or for a
    model without a ``seed`` input) the client draws the same z with the same RNG and sends it
    (with the seeds as ``noise_seed`` for models that draw per-image noise). ``truncation``:
    psi for every image (default: the model's own).
    """
    if n < 1:
        raise UsageError(f"-n must be >= 1, got {n}")
    if not 0 <= seed <= MAX_SEED - n:
        raise UsageError(f"--seed must be in [0, {MAX_SEED - n}], got {seed}")
    if truncation is not None and not math.isfinite(truncation):
        raise UsageError(f"--truncation must be a finite number, got {truncation}")
    info = model_info(url, model, protocol, served_models)
    seeds = np.arange(seed, seed + n, dtype=np.int64)
    feeds: dict[str, np.ndarray] = {}
    if info.accepts_seed and not client_latents:
        feeds["seed"] = seeds
    else:
        feeds["z"] = draw_latents(seeds, info.latent_dim)
        if info.draws_noise:
            feeds["noise_seed"] = seeds
    if truncation is not None:
        if not info.accepts_truncation:
            raise UsageError(f"model {info.name!r} takes no truncation: drop --truncation")
        feeds["truncation"] = np.full((n, 1), truncation, np.float32)
    if info.num_classes > 0:
        if label is not None and not 0 <= label < info.num_classes:
            raise UsageError(f"--label must be in [0, {info.num_classes - 1}], got {label}")
        labels = np.full(n, label) if label is not None else np.arange(n) % info.num_classes
        feeds["labels"] = labels.astype(np.int64)
    elif label is not None:
        raise UsageError(f"model {info.name!r} is unconditional: drop --label")
    step = info.max_batch_size or n
    with TritonRunner(url, info.name, protocol, output=info.output) as runner:
        chunks = [
            runner.run({k: v[i : i + step] for k, v in feeds.items()}) for i in range(0, n, step)
        ]
    return np.concatenate(chunks), info


def save_grid(images: np.ndarray, path: Path | str, nrow: int | None = None) -> Path:
    """Tile N images (float NCHW in [-1, 1] or uint8 NHWC) into one PNG."""
    from gendeploy.images import save_grid as _save

    return _save(images, Path(path), nrow=nrow or math.ceil(math.sqrt(len(images))))


def inference_statistics(url: str, model: str, protocol: str = "http") -> dict[str, int]:
    """Total inference and execution counts of a model (all versions)."""
    client = connect(url, protocol)
    try:
        if protocol == "grpc":
            stats = client.get_inference_statistics(model, as_json=True)
        else:
            stats = client.get_inference_statistics(model)
    finally:
        client.close()
    totals = {"inference_count": 0, "execution_count": 0}
    for entry in stats.get("model_stats", []):
        for key in totals:
            totals[key] += int(entry.get(key, 0))
    return totals
