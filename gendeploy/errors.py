"""Typed errors. Each message is one line naming the problem and the fix; the CLI prints it and
exits non-zero (exit code ``GendeployError.exit_code``)."""

from __future__ import annotations

import errno


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
    score): nothing is published. ``artifact`` names the refused artifact ("int8", "fp16"...)."""

    def __init__(self, message: str, artifact: str | None = None) -> None:
        super().__init__(message)
        self.artifact = artifact


class UnscorableError(QualityError):
    """The quality gate cannot score this generator (FP32's samples have no noise floor or are not
    finite), so no reduced precision can be gated."""


class QuantizationError(ExportError):
    """INT8 post-training quantization itself failed (NNCF could not quantize the graph)."""


class MissingDependencyError(GendeployError):
    """An optional dependency (TensorRT, CUDA, OpenVINO, tritonserver...) is not installed."""


class ServeError(GendeployError):
    """The model repository or server could not be prepared, started or queried."""


class TuneError(GendeployError):
    """The configuration search could not run or measured nothing usable."""


class DeployError(GendeployError):
    """Deployment manifests could not be written or do not match their schema."""


_OS_HINTS = {
    errno.EROFS: "the file system is read-only: choose a location on a writable one",
    errno.ENOSPC: "the disk is full: free some space or choose another location",
    errno.EDQUOT: "the disk quota is exhausted: free some space or choose another location",
    errno.EACCES: "choose a location you can write to, or fix its permissions",
    errno.EPERM: "choose a location you can write to, or fix its permissions",
    errno.EEXIST: "a file is in the way of a directory: remove it or choose another location",
    errno.ENOTDIR: "a file is in the way of a directory: remove it or choose another location",
    errno.ENOENT: "check the path",
}


def describe_os_error(e: OSError) -> str:
    """One line for a file-system error: the path, the cause, and what to do."""
    if e.filename is None:  # a socket or another error without a path
        cause = e.strerror or str(e) or type(e).__name__
        return f"{cause} ({type(e).__name__}); check the address or path it was given"
    path = e.filename
    if e.filename2 is not None:
        path = f"{path} -> {e.filename2}"
    cause = e.strerror or type(e).__name__
    hint = _OS_HINTS.get(e.errno or 0, "check the path and its file system")
    return f"{path}: {cause}; {hint}"
