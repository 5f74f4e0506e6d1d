"""``gendeploy.serve.trace`` on trace files as Triton 2.51 writes them (``--trace-config
triton,file=...``: a JSON list per file, ``<file>.0``, ``<file>.1``, ...; one entry names the
request's model, others carry its timestamps in ns)."""

from __future__ import annotations

import json
from pathlib import Path

from gendeploy.serve.trace import read_traces, timer_waits, trace_args

MS = 1_000_000


def entries(request: int, model: str, stamps: dict[str, float]) -> list[dict]:
    return [
        {"id": request, "model_name": model, "model_version": 1},
        {
            "id": request,
            "timestamps": [{"name": name, "ns": int(ms * MS)} for name, ms in stamps.items()],
        },
    ]


def request(request: int, queued: float, start: float, end: float) -> list[dict]:
    stamps = {"REQUEST_START": queued, "QUEUE_START": queued, "COMPUTE_START": start}
    return entries(request, "tinyc", {**stamps, "COMPUTE_END": end, "REQUEST_END": end + 0.1})


def test_a_wait_on_an_idle_model_is_the_timer_and_one_behind_busy_batches_is_not(
    tmp_path: Path,
) -> None:
    path = tmp_path / "trace.json"
    assert f"--trace-config=triton,file={path}" in trace_args(path)
    busy = [request(100 + i, 2000.0 + 5 * i, 2000.0 + 5 * i, 2005.0 + 5 * i) for i in range(110)]
    Path(f"{path}.0").write_text(
        json.dumps(
            [
                *request(1, 0.0, 0.2, 3.0),  # quick
                *request(2, 10.0, 510.4, 540.0),  # 500 ms in the queue, the model idle
                *request(3, 2000.0, 2520.0, 2530.0),  # 520 ms in the queue behind busy batches
            ]
        )
    )
    Path(f"{path}.1").write_text(json.dumps([e for r in busy for e in r]))
    Path(f"{path}.2").write_text('[{"id": 999, "model_name": "tin')  # cut short by a kill
    traces = read_traces(path)
    assert len(traces) == 3 + len(busy)
    assert {t.id: t.queue_ms for t in traces if t.id <= 3} == {1: 0.2, 2: 500.4, 3: 520.0}
    assert [t.id for t in timer_waits(traces, 480.0, 650.0)] == [2]
