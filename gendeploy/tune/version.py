"""The winner, written into the user's repository as a new version of the tuned model and of its
NGC siblings (``<model>_onnx``, ``<model>_trt``: what ``deploy k8s`` and ``serve --docker`` serve).

Each new version holds the latest version's files unchanged plus ``tuning.json`` (what was
measured and how to reproduce it), so it is never identical to a served version;
``serve.repo.write_model`` stages it, renames it to N+1 and writes ``config.pbtxt`` (built through
Triton's protobuf) last. Version N stays on disk, so a server started earlier keeps serving it
until it reloads (``gendeploy serve --watch`` loads N+1). A model whose config the winner leaves
unchanged gets no new version.

How the winner maps onto each backend:

- python (the tuned model): every axis; threads are its ``intra_op_threads`` parameter.
- ONNX Runtime (``_onnx``): instances, max batch, queue delay, preferred batch; threads are the
  backend's ``intra_op_thread_count`` parameter (0: ONNX Runtime's default, the parameter left out).
- TensorRT (``_trt``): instances, queue delay, preferred batch, max batch up to the engine's
  profile max; threads have no TensorRT counterpart (said in the notes).

The winner was measured on this machine's CPU through the python backend; on a GPU instance
group its instance count is a starting point, said in the notes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gendeploy.errors import TuneError
from gendeploy.serve.repo import ModelPlan, WrittenModel, parse_config, write_model
from gendeploy.tune.space import Candidate

TUNING_FILE = "tuning.json"
PYTHON_THREADS = "intra_op_threads"  # gendeploy's backend_model.py
ORT_THREADS = "intra_op_thread_count"  # Triton's ONNX Runtime backend
SIBLINGS = ("_onnx", "_trt")  # what `gendeploy repo` names the NGC models of an export


def latest_version(model_dir: Path) -> Path:
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise TuneError(f"{model_dir} has no version directory; write one with `gendeploy repo`")
    return model_dir / str(versions[-1])


@dataclass
class TunedConfig:
    """One model's config with the winner applied, and what could not be carried over."""

    model: str
    old: Any  # model_config_pb2.ModelConfig
    new: Any
    notes: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.new != self.old)


def _serving(new: Any, c: Candidate, max_batch: int) -> None:
    """The settings every backend shares: instances, max batch, dynamic batching."""
    kind = new.instance_group[0].kind if new.instance_group else 0
    del new.instance_group[:]
    new.instance_group.add(kind=kind, count=c.instances)
    new.max_batch_size = max_batch
    new.dynamic_batching.max_queue_delay_microseconds = c.queue_delay_us
    del new.dynamic_batching.preferred_batch_size[:]
    if c.preferred_batch and c.preferred_batch <= max_batch:
        new.dynamic_batching.preferred_batch_size.append(c.preferred_batch)


def tuned_config(name: str, config: Any, c: Candidate) -> TunedConfig:
    """``config`` (a ``ModelConfig``) serving ``c``'s settings, mapped onto its backend."""
    from tritonclient.grpc import model_config_pb2

    new = model_config_pb2.ModelConfig()
    new.CopyFrom(config)
    tuned = TunedConfig(name, config, new)
    if config.backend == "python":
        _serving(new, c, c.max_batch_size)
        new.parameters[PYTHON_THREADS].string_value = str(c.threads)
    elif config.platform == "onnxruntime_onnx" or config.backend == "onnxruntime":
        _serving(new, c, c.max_batch_size)
        if c.threads:
            new.parameters[ORT_THREADS].string_value = str(c.threads)
        elif ORT_THREADS in new.parameters:
            del new.parameters[ORT_THREADS]
    elif config.platform == "tensorrt_plan" or config.backend == "tensorrt":
        profile_max = int(config.max_batch_size)  # `gendeploy repo` set it to the engine's max
        _serving(new, c, min(c.max_batch_size, profile_max))
        if c.max_batch_size > profile_max:
            tuned.notes.append(
                f"{name}: max batch {profile_max} (the engine's profile max), not "
                f"{c.max_batch_size}: re-export with --max-batch {c.max_batch_size} for more"
            )
        if c.preferred_batch > profile_max:
            tuned.notes.append(f"{name}: preferred batch {c.preferred_batch} left out (> max)")
        if c.threads:
            tuned.notes.append(f"{name}: {c.threads} thread(s) not applied (TensorRT has none)")
    else:
        kind = config.platform or config.backend
        raise TuneError(f"{name}: cannot apply a tuned configuration to a {kind} model")
    kinds = {g.kind for g in config.instance_group}
    if model_config_pb2.ModelInstanceGroup.KIND_GPU in kinds and tuned.changed:
        tuned.notes.append(
            f"{name}: {c.instances} instance(s) per GPU, as measured on this CPU: a starting "
            "point; tune on the GPU host (Model Analyzer in the NGC container) to confirm"
        )
    return tuned


def siblings(repo: Path, model: str) -> list[str]:
    """``model`` and the NGC models of the same export beside it."""

    def export(path: Path) -> str | None:
        params = parse_config(path.read_text()).parameters
        return params["gendeploy_export"].string_value if "gendeploy_export" in params else None

    own = export(repo / model / "config.pbtxt")
    names = [model]
    for suffix in SIBLINGS:
        path = repo / f"{model}{suffix}" / "config.pbtxt"
        if own is not None and path.is_file() and export(path) == own:
            names.append(f"{model}{suffix}")
    return names


def plan_tuned(repo: Path, model: str, winner: Candidate) -> list[TunedConfig]:
    """The winner applied to ``model`` and its siblings (nothing written). Where ``model``'s own
    configuration won, nothing changes anywhere: `gendeploy repo` set each sibling for its own
    backend (one instance of a C++ backend beside the python model's two on CPU)."""
    tuned = [
        tuned_config(name, parse_config((repo / name / "config.pbtxt").read_text()), winner)
        for name in siblings(repo, model)
    ]
    if not tuned[0].changed:
        return [TunedConfig(t.model, t.old, t.old) for t in tuned]
    return tuned


def write_tuned(
    repo: Path, tuned: list[TunedConfig], summary: dict[str, Any], keep_versions: int = 2
) -> list[WrittenModel]:
    """A new version of each model whose config changes (mapped before any is written)."""
    written = []
    text = json.dumps(summary, indent=2) + "\n"
    for t in tuned:
        if not t.changed:
            continue
        latest = latest_version(repo / t.model)
        files = {
            p.name: p for p in sorted(latest.iterdir()) if p.is_file() and p.name != TUNING_FILE
        }
        plan = ModelPlan(t.model, t.new, files, {TUNING_FILE: text})
        written.append(write_model(plan, repo, keep_versions))
    return written
