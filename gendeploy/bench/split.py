"""Where a served image's time goes, and whose CPU it took: read from the server around a load.

Snapshots taken before and after a load (:func:`snapshot`) give, per image served:

- **engine**: the engine's run inside gendeploy's python model (its ``gendeploy_engine_seconds``
  counter);
- **model python**: the rest of the model's ``execute``: reading and checking requests, drawing
  z from seeds, building the response tensors (``gendeploy_execute_seconds`` minus engine);
- **backend hop**: what Triton counts as compute for a batch beyond ``execute``: the python
  backend writing the requests into shared memory, waking the stub, reading its responses back;
- **server input/output**: Triton's compute input and output (copying tensors in and out);
- **idle**: instance time that went to none of these (waiting for the batcher, the frontend,
  the clients; with a busy machine, waiting for a core). The five add up to ``instances /
  throughput``.

Batch times come from Triton's per-batch-size statistics (each batch once, not once per request)
and the model's counters, which it sends at most 0.5 s late (the snapshots wait that long).
CPU shares are of the whole machine (all cores) over the load: the load generator (``client``),
``tritonserver``, the python ``stubs`` (the engine's threads included), and other processes.
"""

from __future__ import annotations

import os
import time
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

from gendeploy.errors import ServeError
from gendeploy.serve.backend_model import ENGINE_METRIC, EXECUTE_METRIC

FLUSH_WAIT_S = 0.6  # the model sends its counters every 0.5 s


@dataclass(frozen=True)
class ServerSnapshot:
    at: float  # time.monotonic()
    images: int  # Triton's inference_count
    batches: int  # Triton's execution_count
    input_s: float  # summed over batches, not requests
    infer_s: float
    output_s: float
    engine_s: float  # the model's counters
    execute_s: float
    server_cpu_s: float  # tritonserver's CPU time
    stubs_cpu_s: float  # the python stubs' (engine threads included)
    machine_busy_s: float  # every core's non-idle time


@dataclass(frozen=True)
class TimeSplit:
    """Per image served, in ms of instance time, and shares of the machine's CPU."""

    engine_ms: float
    model_python_ms: float
    backend_hop_ms: float
    server_io_ms: float
    idle_ms: float
    mean_batch: float
    cpu_client: float
    cpu_server: float
    cpu_stubs: float
    cpu_other: float

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def snapshot(server: Any, model: str, after_load: bool) -> ServerSnapshot:
    """The model's counters and the server's CPU. After a load the CPU is read at once (the
    load just ended) and the counters once the model has sent its last ones; before a load the
    other way round, so that the CPU figures cover the load and nothing else."""
    if not after_load:
        time.sleep(FLUSH_WAIT_S)
    at, cpu = time.monotonic(), _cpu_now(server)
    if after_load:
        time.sleep(FLUSH_WAIT_S)
    client = server.admin_client()
    try:
        stats = client.get_inference_statistics(model)
    except Exception as e:  # tritonclient raises its own exception or a socket error
        raise ServeError(f"cannot read the server's statistics: {e}") from None
    finally:
        client.close()
    if not isinstance(stats, dict):  # the gRPC client answers a protobuf
        from google.protobuf import json_format

        stats = json_format.MessageToDict(stats, preserving_proto_field_name=True)
    entry = next(m for m in stats.get("model_stats", []) if m.get("name") == model)
    sums = {"compute_input": 0, "compute_infer": 0, "compute_output": 0}
    for batch in entry.get("batch_stats", []):
        for key in sums:
            sums[key] += int(batch.get(key, {}).get("ns", 0))
    metrics = _metrics(server.metrics_url, model)
    return ServerSnapshot(
        at=at,
        images=int(entry.get("inference_count", 0)),
        batches=int(entry.get("execution_count", 0)),
        input_s=sums["compute_input"] / 1e9,
        infer_s=sums["compute_infer"] / 1e9,
        output_s=sums["compute_output"] / 1e9,
        engine_s=metrics.get(ENGINE_METRIC, 0.0),
        execute_s=metrics.get(EXECUTE_METRIC, 0.0),
        **cpu,
    )


def _cpu_now(server: Any) -> dict[str, float]:
    import psutil

    server_cpu = stubs_cpu = 0.0
    if server.process is not None:
        root = psutil.Process(server.process.pid)
        server_cpu = _cpu_s(root)
        stubs_cpu = sum(_cpu_s(p) for p in root.children(recursive=True))
    times = psutil.cpu_times()
    busy = sum(times) - times.idle - getattr(times, "iowait", 0.0)
    return {"server_cpu_s": server_cpu, "stubs_cpu_s": stubs_cpu, "machine_busy_s": busy}


def _cpu_s(process: Any) -> float:
    import psutil

    try:
        t = process.cpu_times()
    except psutil.Error:  # ended between listing and reading
        return 0.0
    return float(t.user + t.system)


def _metrics(url: str, model: str) -> dict[str, float]:
    """gendeploy's counters for ``model`` from the server's Prometheus text."""
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            text = response.read().decode()
    except OSError as e:
        raise ServeError(f"cannot read the server's metrics at {url}: {e}") from None
    found: dict[str, float] = {}
    for line in text.splitlines():
        name, _, rest = line.partition("{")
        if name in (ENGINE_METRIC, EXECUTE_METRIC) and f'model="{model}"' in rest:
            found[name] = found.get(name, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def time_split(
    before: ServerSnapshot,
    after: ServerSnapshot,
    instances: int,
    images_per_s: float,
    client_cpu_s: float,
    cores: int | None = None,
) -> TimeSplit | None:
    """The split between two snapshots around a load that served ``images_per_s`` (None where
    no image was served between them)."""
    images = after.images - before.images
    if images <= 0 or images_per_s <= 0:
        return None
    cpu = (cores or os.cpu_count() or 1) * (after.at - before.at)

    def per_image(seconds: float) -> float:
        return round(max(seconds, 0.0) * 1e3 / images, 4)

    engine = after.engine_s - before.engine_s
    execute = after.execute_s - before.execute_s
    infer = after.infer_s - before.infer_s
    io = (after.input_s - before.input_s) + (after.output_s - before.output_s)
    server = after.server_cpu_s - before.server_cpu_s
    stubs = after.stubs_cpu_s - before.stubs_cpu_s
    machine = after.machine_busy_s - before.machine_busy_s
    return TimeSplit(
        engine_ms=per_image(engine),
        model_python_ms=per_image(execute - engine),
        backend_hop_ms=per_image(infer - execute),
        server_io_ms=per_image(io),
        idle_ms=round(max(instances * 1e3 / images_per_s - per_image(infer + io), 0.0), 4),
        mean_batch=round(images / max(after.batches - before.batches, 1), 2),
        cpu_client=round(client_cpu_s / cpu, 3),
        cpu_server=round(server / cpu, 3),
        cpu_stubs=round(stubs / cpu, 3),
        # this process (the bench itself, idle while the load runs) counts as other
        cpu_other=round(max(machine - server - stubs - client_cpu_s, 0.0) / cpu, 3),
    )


def describe_split(split: TimeSplit) -> str:
    """One line: the per-image split and the CPU shares."""
    return (
        f"per image engine {split.engine_ms:.2f} + model python {split.model_python_ms:.2f} + "
        f"hop {split.backend_hop_ms:.2f} + server I/O {split.server_io_ms:.2f} + idle "
        f"{split.idle_ms:.2f} ms (batch {split.mean_batch:.1f}); CPU: client "
        f"{split.cpu_client:.0%}, tritonserver {split.cpu_server:.0%}, stubs "
        f"{split.cpu_stubs:.0%}, other processes {split.cpu_other:.0%}"
    )
