"""Runs an export's runner with only ``z`` (and ``labels``): the inputs its generator takes beyond
them get what the served model gives a request that leaves them out (``backend_model``)."""

from __future__ import annotations

import numpy as np

from gendeploy.manifest import Interface
from gendeploy.runtime.base import Feeds, Runner
from gendeploy.seeds import draw_noise


def complete_feeds(feeds: Feeds, interface: Interface) -> Feeds:
    """``feeds`` plus ``truncation`` at the model's default and noise drawn for seeds 0..N-1,
    where missing."""
    n = len(feeds["z"])
    out = dict(feeds)
    if interface.truncation_arg and "truncation" not in out:
        out["truncation"] = np.full((n, 1), interface.truncation_default, np.float32)
    if any(item.name not in out for item in interface.noise):
        drawn = draw_noise(np.arange(n), [item.shape for item in interface.noise])
        for item, values in zip(interface.noise, drawn, strict=True):
            out.setdefault(item.name, values)
    return out


class WithDefaults(Runner):
    """``runner`` with its extra inputs filled by ``complete_feeds``."""

    def __init__(self, runner: Runner, interface: Interface) -> None:
        self.runner = runner
        self.interface = interface
        self.name = runner.name
        self.precision = runner.precision  # what the wrapped engine executes, not the default

    def run(self, feeds: Feeds) -> np.ndarray:
        return self.runner.run(complete_feeds(feeds, self.interface))

    def close(self) -> None:
        self.runner.close()
