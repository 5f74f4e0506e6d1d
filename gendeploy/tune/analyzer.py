"""Model Analyzer, run by gendeploy on a private, locked tritonserver.

Each :class:`Block` of candidates is one ``model-analyzer profile`` run in local launch mode: Model
Analyzer writes each candidate's config as a model variant, starts the pip ``tritonserver`` (the
prepared one, with the python backend stub), loads the variant, drives it with perf_analyzer at
each concurrency, and records everything in its checkpoint. One workspace per protocol keeps one
checkpoint per protocol (Model Analyzer's protocol is per run). Model Analyzer resumes from the
latest checkpoint in ``checkpoint_directory`` and skips every configuration it holds: its key is
the model config variant and perf_analyzer's flags, not the server, its ports or the engine file.
That is what lets one tuning run's blocks share a workspace, and why each run starts from an empty
work folder (``tune.api``): a checkpoint from an earlier run would hand back its old measurements.

The server Model Analyzer launches binds 127.0.0.1 only, runs explicit model control (Model
Analyzer needs it), and has every API group in ``serve.admin.LOCKED_APIS`` behind a key made for
this tuning run; Model Analyzer's client sends it (``tune.analyzer_main``). The key is written
to the run's config file (0600, in a 0700 directory) and is dead once the run's server stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from gendeploy.errors import TuneError
from gendeploy.fileio import atomic_write
from gendeploy.serve.admin import KEY_ENV, restricted_args
from gendeploy.serve.shm import backend_config, remove_regions, remove_stale_regions
from gendeploy.serve.tritonserver import TritonBinary
from gendeploy.tune.space import Block, Candidate, Objective, Protocol, candidate_from_config

ANALYZER_MAIN = "gendeploy.tune.analyzer_main"
# read_measurements reads this version's checkpoint layout; analyzer_main keys its client
MODEL_ANALYZER_VERSION = "1.58.0"
SERVER_VERSION = re.compile(r"^\|\s*server_version\s*\|\s*(\S+)\s*\|", re.MULTILINE)
# Model Analyzer's words when it stops a run whose first measurements all failed
MEASUREMENTS_FAILED = "attempts to acquire measurements have failed"
# perf_analyzer runs per measurement: one that finds no stable window (a busy machine) is run
# again by Model Analyzer with a window 1 s longer (its "auto adjust"): this many runs in all
PA_ATTEMPTS = 3
# Model Analyzer's progress lines worth showing
SHOWN = re.compile(
    r"Profiling \S+: |load failed|window is too small|Creating model config: |error", re.IGNORECASE
)


@dataclass(frozen=True)
class Measurement:
    """One perf_analyzer measurement of one candidate at one concurrency (times in ms)."""

    candidate: Candidate
    concurrency: int
    throughput: float  # inferences/s; one image per request
    p99_ms: float
    p90_ms: float
    avg_ms: float
    queue_ms: float
    compute_infer_ms: float
    compute_io_ms: float  # the server's input + output handling
    client_send_recv_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate.to_dict(),
            **{k: v for k, v in self.__dict__.items() if k != "candidate"},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Measurement:
        return cls(**{**data, "candidate": Candidate.from_dict(data["candidate"])})


@dataclass(frozen=True)
class Constraints:
    """Model Analyzer's constraints (a p99 budget, a throughput floor; either may be unset),
    applied by gendeploy (``search.Goal``), not handed to Model Analyzer: its config reads them
    as whole milliseconds (2.5 becomes 2, and a budget under 1 ms divides by zero), and its brute
    search, the one used here, does not search by them."""

    p99_budget_ms: float | None = None
    min_throughput: float | None = None


@dataclass(frozen=True)
class AnalyzerRun:
    """Everything that stays the same over one tuning run's Model Analyzer invocations."""

    work: Path
    model: str
    repo: Path  # the prepared repository: only the tuned model, its latest version
    input_data: Path
    perf_analyzer: Path
    tritonserver: TritonBinary
    ports: tuple[int, int, int]
    admin_key: str
    shm_prefix: str
    instance_kind: str
    concurrencies: tuple[int, ...]
    objective: Objective
    window_ms: int = 2000
    stability_pct: int = 15
    max_trials: int = 8
    timeout_s: float = 1800.0  # one Model Analyzer run

    def workspace(self, protocol: Protocol) -> Path:
        return self.work / f"analyzer-{protocol.value}"

    def server_flags(self) -> dict[str, Any]:
        """tritonserver flags: loopback only, the python backend prepared here, locked APIs."""
        flags: dict[str, Any] = {
            "backend-directory": str(self.tritonserver.backend_dir),
            "http-address": "127.0.0.1",
            "grpc-address": "127.0.0.1",
            "metrics-address": "127.0.0.1",
            # Model Analyzer writes "--flag value": booleans as the strings tritonserver reads
            "allow-gpu-metrics": "false",
            "allow-sagemaker": "false",
            "allow-vertex-ai": "false",
            "exit-timeout-secs": 5,
            "backend-config": backend_config(self.shm_prefix),
        }
        for arg in restricted_args(self.admin_key):
            name, value = arg[2:].split("=", 1)
            flags[name] = value
        return flags

    def config(self, block: Block) -> dict[str, Any]:
        """Model Analyzer's profile config (its YAML keys) for one block."""
        ws = self.workspace(block.protocol)
        http, grpc, metrics = self.ports
        objective = (
            "perf_throughput" if self.objective is Objective.throughput else ("perf_latency_p99")
        )
        model: dict[str, Any] = {
            "cpu_only": self.instance_kind == "KIND_CPU",
            "parameters": {"concurrency": list(self.concurrencies)},
            "perf_analyzer_flags": {
                "input-data": str(self.input_data),
                "measurement-mode": "time_windows",
                "measurement-interval": self.window_ms,
                "stability-percentage": self.stability_pct,
                "max-trials": self.max_trials,
            },
            "model_config_parameters": block.model_config_parameters(self.instance_kind),
        }
        config: dict[str, Any] = {
            "model_repository": str(self.repo),
            "output_model_repository_path": str(ws / "output_models"),
            "override_output_model_repository": True,
            "checkpoint_directory": str(ws / "checkpoints"),
            "export_path": str(ws / "export"),
            "triton_output_path": str(ws / "tritonserver.log"),
            "triton_launch_mode": "local",
            "triton_server_path": str(self.tritonserver.executable),
            "triton_server_environment": dict(self.tritonserver.env),
            "triton_server_flags": self.server_flags(),
            "triton_http_endpoint": f"127.0.0.1:{http}",
            "triton_grpc_endpoint": f"127.0.0.1:{grpc}",
            "triton_metrics_url": f"http://127.0.0.1:{metrics}/metrics",
            "perf_analyzer_path": str(self.perf_analyzer),
            # perf_analyzer shares 2 cores with the server here: never kill it for its CPU use
            "perf_analyzer_cpu_util": 1000.0,
            "perf_analyzer_max_auto_adjusts": PA_ATTEMPTS,
            "client_protocol": block.protocol.value,
            "skip_summary_reports": True,
            "objectives": {objective: 10},
            "profile_models": {self.model: model},
        }
        return config

    def profile(self, block: Block, say: Callable[[str], None]) -> list[str]:
        """One ``model-analyzer profile`` run over ``block``; returns the lines that explain what
        failed (model loads, perf_analyzer)."""
        import yaml

        ws = self.workspace(block.protocol)
        ws.mkdir(parents=True, exist_ok=True, mode=0o700)
        config_path = ws / f"config-{len(list(ws.glob('config-*.yaml'))) + 1}.yaml"
        text = yaml.safe_dump(self.config(block), sort_keys=False).encode()

        def write(f: BinaryIO) -> None:
            os.fchmod(f.fileno(), 0o600)  # it holds the run's admin key
            f.write(text)

        atomic_write(config_path, write)
        remove_stale_regions()
        log_path = ws / "model-analyzer.log"
        cmd = [sys.executable, "-m", ANALYZER_MAIN, "profile", "-f", str(config_path)]
        problems: list[str] = []
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, KEY_ENV: self.admin_key},
                cwd=ws,
                start_new_session=True,  # its tritonserver and stubs: one group to stop
            )
            timed_out = threading.Event()

            def expire() -> None:
                timed_out.set()
                _stop_group(process)

            watchdog = threading.Timer(self.timeout_s, expire)
            watchdog.start()
            try:
                problems = _follow(process, log, say)
            finally:
                watchdog.cancel()
                _stop_group(process)
                remove_regions(self.shm_prefix)
        if timed_out.is_set():
            raise TuneError(f"Model Analyzer ran past {self.timeout_s:.0f}s (log: {log_path})")
        pa_log = ws / "export" / "perf_analyzer_error.log"
        pa_text = pa_log.read_text(errors="replace") if pa_log.is_file() else ""
        failed = [line for line in pa_text.splitlines() if line.startswith("Failed to obtain")]
        if failed:  # perf_analyzer gave up on a level: the measurement it had is not kept
            problems.append(f"perf_analyzer: {failed[-1]}")
        # Model Analyzer stops a run whose first two measurements failed: on a busy machine that
        # is perf_analyzer finding no stable window, a failed measurement of those candidates
        # (what was measured before stays in the checkpoint), not a failed tuning run
        gave_up = any(MEASUREMENTS_FAILED in line for line in problems)
        if process.returncode != 0 and not gave_up:
            tail = problems[-1] if problems else f"exit code {process.returncode}"
            server = _last_line(ws / "tritonserver.log")
            why = f"; tritonserver: {server}" if server else ""
            raise TuneError(f"Model Analyzer failed: {tail}{why} (log: {log_path})")
        return problems


def _last_line(path: Path) -> str:
    if not path.is_file():
        return ""
    lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


def _follow(
    process: subprocess.Popen[bytes], log: BinaryIO, say: Callable[[str], None]
) -> list[str]:
    assert process.stdout is not None
    problems = []
    for raw in process.stdout:
        log.write(raw)
        line = raw.decode(errors="replace").strip()
        text = line.removeprefix("[Model Analyzer] ").strip()
        # analyzer_main's own refusals start with "gendeploy:" (a SystemExit's text on stderr)
        if (
            "load failed" in text
            or "Model Analyzer encountered an error" in text
            or MEASUREMENTS_FAILED in text
            or text.startswith("gendeploy:")
        ):
            problems.append(text)
        if SHOWN.search(text) or text.startswith("gendeploy:"):
            say(f"  {text}")
    return problems


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """Model Analyzer, its tritonserver and the stubs: SIGINT, then SIGKILL to the group."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def server_version(workspace: Path) -> str | None:
    """The version the tritonserver Model Analyzer launched reported at start (its option table,
    the ``version`` of its ``/v2`` metadata), from its log in ``workspace``."""
    log = workspace / "tritonserver.log"
    found = SERVER_VERSION.findall(log.read_text(errors="replace")) if log.is_file() else []
    return found[-1] if found else None


def read_measurements(workspace: Path, model: str, protocol: Protocol) -> list[Measurement]:
    """Every measurement in Model Analyzer's latest checkpoint in ``workspace``.

    The checkpoint is Model Analyzer's private state, read as version ``MODEL_ANALYZER_VERSION``
    writes it: any other layout is one ``TuneError`` line, not a traceback."""
    from google.protobuf.json_format import ParseError

    checkpoints = sorted(
        (workspace / "checkpoints").glob("*.ckpt"),
        key=lambda p: int(p.stem) if p.stem.isdigit() else -1,
    )
    if not checkpoints:
        return []
    try:
        return _parse_checkpoint(json.loads(checkpoints[-1].read_text()), model, protocol)
    except (KeyError, IndexError, TypeError, ValueError, AttributeError, ParseError) as e:
        what = f"{type(e).__name__}: {e}".splitlines()[0][:160]
        raise TuneError(
            f"cannot read Model Analyzer's checkpoint {checkpoints[-1]} ({what}): gendeploy reads "
            f"the layout of triton-model-analyzer=={MODEL_ANALYZER_VERSION}; install that version"
        ) from None


def _parse_checkpoint(data: dict[str, Any], model: str, protocol: Protocol) -> list[Measurement]:
    from google.protobuf import json_format
    from tritonclient.grpc import model_config_pb2

    results = data.get("ResultManager.results", {}).get("_results", {}).get(model, {})
    out = []
    for run_config, measurements in results.values():
        model_run = run_config["_model_run_configs"][0]
        used = model_run["_perf_config"]["_options"].get("-i")
        if used != protocol.value:
            raise TuneError(f"a {used} measurement in the {protocol.value} workspace")
        config = json_format.ParseDict(
            model_run["_model_config_variant"]["model_config"],
            model_config_pb2.ModelConfig(),
            ignore_unknown_fields=True,
        )
        candidate = candidate_from_config(config, protocol)
        for measurement in measurements.values():
            for part in measurement["_model_config_measurements"]:
                values = {
                    tag: float(v[1]["_value"]) for tag, v in part["_non_gpu_data_from_tag"].items()
                }
                concurrency = int(part["_model_specific_pa_params"]["concurrency-range"])
                out.append(_measurement(candidate, concurrency, values))
    return out


def _measurement(candidate: Candidate, concurrency: int, v: dict[str, float]) -> Measurement:
    return Measurement(
        candidate=candidate,
        concurrency=concurrency,
        throughput=round(v["perf_throughput"], 2),
        p99_ms=round(v["perf_latency_p99"], 3),
        p90_ms=round(v.get("perf_latency_p90", 0.0), 3),
        avg_ms=round(v.get("perf_latency_avg", 0.0), 3),
        queue_ms=round(v.get("perf_server_queue", 0.0), 3),
        compute_infer_ms=round(v.get("perf_server_compute_infer", 0.0), 3),
        compute_io_ms=round(
            v.get("perf_server_compute_input", 0.0) + v.get("perf_server_compute_output", 0.0), 3
        ),
        client_send_recv_ms=round(v.get("perf_client_send_recv", 0.0), 3),
    )
