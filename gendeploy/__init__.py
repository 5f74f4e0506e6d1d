"""gendeploy: from a PyTorch GAN to verified, served engines."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "export_generator"]


def __getattr__(name: str) -> Any:
    # imported on first use: `import gendeploy` and `gendeploy --help` stay free of torch
    if name == "export_generator":
        from gendeploy.export.inmemory import export_generator

        return export_generator
    raise AttributeError(f"module 'gendeploy' has no attribute {name!r}")
