"""The quality column: what each runner draws, judged by the export's quality gate.

Every timed runner except eager (the reference: 1.0 by definition) is judged with
``quality_gate.QualityGate`` on the same seeds the export's gate uses, so a row's speed and its
quality come from the same runner in the same run: the Frechet ratio (and, for digits models,
label accuracy and the Frechet ratio to real digits) sits next to images/s.
"""

from __future__ import annotations

from collections.abc import Callable

from pydantic import TypeAdapter
from torch import nn

from gendeploy.bench.results import RunnerQuality, Unjudged
from gendeploy.errors import GendeployError
from gendeploy.export.quality_gate import QualityConfig, QualityGate, model_facts
from gendeploy.manifest import Manifest, Precision
from gendeploy.runtime.base import Runner
from gendeploy.runtime.eager import EagerRunner
from gendeploy.runtime.registry import REGISTRY


def runner_quality(
    runners: dict[str, Runner],
    manifest: Manifest,
    module: nn.Module,
    say: Callable[[str], None],
) -> dict[str, RunnerQuality | Unjudged]:
    """runner name -> the quality gate's figures, or why it could not be judged."""
    facts = model_facts(
        manifest.source, manifest.latent_dim, manifest.num_classes, manifest.image_shape
    )
    config = QualityConfig(batch=min(64, manifest.batch.max))
    try:
        gate = QualityGate(EagerRunner(module).run, facts, config, reference_module=module)
    except GendeployError as e:
        return {name: Unjudged(str(e)) for name in runners if name != "eager"}
    results: dict[str, RunnerQuality | Unjudged] = {}
    for name, runner in runners.items():
        if name == "eager":
            continue
        # bounds of the precision its artifact was made in (ORT runs int8.onnx dequantized: its
        # errors are INT8's); a runner outside the registry by what it executed
        entry = REGISTRY.get(name)
        precision = entry.precision if entry else Precision(runner.precision.split("+")[0])
        try:
            result = gate.judge(runner.run, precision)
        except GendeployError as e:  # the gate's own refusals (a runner's crash is a bug)
            results[name] = Unjudged(str(e))
            continue
        results[name] = _RECORDED.validate_python(result.to_dict())
        say(f"  {name:<18} quality: {result.summary()}")
    return results


_RECORDED: TypeAdapter[RunnerQuality] = TypeAdapter(RunnerQuality)  # the figures as recorded
