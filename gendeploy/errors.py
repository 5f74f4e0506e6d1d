"""Typed errors. Each message is one line naming the problem and the fix; the CLI prints it and
exits non-zero (exit code ``GendeployError.exit_code``)."""

from __future__ import annotations


class GendeployError(Exception):
    """Base class: a user-facing problem with a one-line message."""

    exit_code = 1


class UsageError(GendeployError):
    """A flag, name or combination of flags that cannot work."""

    exit_code = 2


class DataError(GendeployError):
    """A dataset path that is missing or a file that is malformed."""


class CheckpointError(GendeployError):
    """A file that is missing, corrupt, foreign, or from another architecture."""


class ExportError(GendeployError):
    """Export could not produce an artifact."""


class ValidationError(ExportError):
    """An artifact did not match eager PyTorch: nothing is published."""


class QualityError(ValidationError):
    """A reduced-precision artifact draws differently from FP32 (per-seed PSNR, distribution, digits
    score), or a generator cannot be scored: nothing is published."""


class MissingDependencyError(GendeployError):
    """An optional dependency (TensorRT, CUDA, OpenVINO, tritonserver...) is not installed."""


class ServeError(GendeployError):
    """The model repository or server could not be prepared, started or queried."""
