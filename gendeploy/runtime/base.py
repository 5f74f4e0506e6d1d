"""One Runner interface for every backend; validation and bench use the same runners.

A runner takes named numpy inputs (``z`` float32 (N, latent); ``labels`` int64 (N,) for conditional
models) and returns the single output as a numpy array. Each backend module says whether it can run
here (``*_availability() -> Availability``); ``registry.py`` names the runners built from them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

Feeds = dict[str, np.ndarray]


class Runner(ABC):
    """Runs one artifact. Subclasses set ``name`` and implement ``run``.

    ``precision`` is what the backend really computes in ("fp32", "bf16", "int8", or a mix such as
    "int8+fp32"), read back from the engine where it can say (OpenVINO's runtime graph, ONNX
    Runtime's optimized graph), never just what was asked for.
    """

    name: str = "runner"
    precision: str = "fp32"

    @abstractmethod
    def run(self, feeds: Feeds) -> np.ndarray:
        """Run one batch synchronously and return the output on the host."""

    def input_aliases(self) -> list[frozenset[str]]:
        """Every name of each input, in order: an engine may give one tensor several (OpenVINO
        merges the names of the tensors an optimization fuses), so a name is looked for among
        all of them. Default: ``input_names``, one each (none known: empty)."""
        return [frozenset({n}) for n in getattr(self, "input_names", [])]

    def output_aliases(self) -> list[frozenset[str]]:
        """Every name of each output, in order (as ``input_aliases``)."""
        return [frozenset({n}) for n in getattr(self, "output_names", [])]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release sessions, engines, connections."""

    def __enter__(self) -> Runner:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True)
class Availability:
    ok: bool
    reason: str = ""


def executed_precision(counts: dict[str, int], default: str = "fp32") -> str:
    """One label for what the compute layers ran in, read from the engine: "int8", "bf16", or a
    mix like "int8+fp32" (most layers first); ``default`` when the engine told nothing."""
    if not counts:
        return default
    return "+".join(sorted(counts, key=lambda p: (-counts[p], p)))
