"""The winner, written into the user's repository as a new version of the model.

The new version holds the latest version's files unchanged plus ``tuning.json`` (what was measured
and how to reproduce it), so it is never identical to a served version; ``serve.repo.write_model``
stages it, renames it to N+1 and writes ``config.pbtxt`` last. Version N stays on disk, so a server
started earlier keeps serving it until it reloads (``gendeploy serve --watch`` loads N+1).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gendeploy.errors import TuneError
from gendeploy.serve.repo import ModelPlan, WrittenModel, parse_config, write_model
from gendeploy.tune.space import Candidate

TUNING_FILE = "tuning.json"


def latest_version(model_dir: Path) -> Path:
    versions = sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())
    if not versions:
        raise TuneError(f"{model_dir} has no version directory; write one with `gendeploy repo`")
    return model_dir / str(versions[-1])


def apply(config: Any, c: Candidate) -> Any:
    """A copy of ``config`` (a ``ModelConfig``) serving ``c``'s settings."""
    from tritonclient.grpc import model_config_pb2

    new = model_config_pb2.ModelConfig()
    new.CopyFrom(config)
    kind = config.instance_group[0].kind if config.instance_group else 0
    del new.instance_group[:]
    new.instance_group.add(kind=kind, count=c.instances)
    new.max_batch_size = c.max_batch_size
    new.dynamic_batching.max_queue_delay_microseconds = c.queue_delay_us
    del new.dynamic_batching.preferred_batch_size[:]
    if c.preferred_batch:
        new.dynamic_batching.preferred_batch_size.append(c.preferred_batch)
    new.parameters["intra_op_threads"].string_value = str(c.threads)
    return new


def write_tuned_version(
    repo: Path, model: str, winner: Candidate, summary: dict[str, Any], keep_versions: int = 2
) -> WrittenModel:
    model_dir = repo / model
    config = parse_config((model_dir / "config.pbtxt").read_text())
    latest = latest_version(model_dir)
    files = {p.name: p for p in sorted(latest.iterdir()) if p.is_file() and p.name != TUNING_FILE}
    texts = {TUNING_FILE: json.dumps(summary, indent=2) + "\n"}
    plan = ModelPlan(model, apply(config, winner), files, texts)
    return write_model(plan, repo, keep_versions)
