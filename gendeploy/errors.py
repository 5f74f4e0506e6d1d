"""Typed errors. Each message is one line naming the problem and the fix; the CLI prints it and
exits non-zero (exit code ``GendeployError.exit_code``)."""

from __future__ import annotations

import copy
import errno
from typing import TypeVar


class GendeployError(Exception):
    """Base class: a user-facing problem with a one-line message."""

    exit_code = 1


E = TypeVar("E", bound=BaseException)


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


# The tensor gate (export/gate.py): one class per check, in the order it runs them.


class GateError(ValidationError):
    """The tensor gate refused an artifact (or the eager model itself). ``what`` is the failed
    check and its figures, without the artifact's name or the figures of the checks before."""

    def __init__(self, message: str, what: str = "") -> None:
        super().__init__(message)
        self.what = what or message


class NameMismatchError(GateError):
    """The artifact's input or output names are not the export's."""


class ShapeMismatchError(GateError):
    """The artifact's output shape or dtype is not the export's."""


class NonFiniteError(GateError):
    """NaN or Inf in an output (the eager model's own, or an artifact's where eager has none:
    in FP16, a value past its range)."""


class ToleranceError(GateError):
    """Values further from eager's than the artifact precision's tolerance."""


class RenderingError(GateError):
    """The rendered uint8 images differ from eager's (PSNR, a pixel's levels, a uint8 head from
    its own float graph's rendering)."""


class BatchInvarianceError(GateError):
    """The same z gives another image alone and inside a batch: dynamic batching would change
    the images served."""


class IgnoresLatentError(GateError):
    """The output does not depend on z: every z gives the same image."""


class NondeterministicModelError(GateError):
    """The eager generator gives another image for the same input (random numbers in forward)."""


class UnexecutedPrecisionError(GateError):
    """The engine executed none of the artifact's layers in the precision it is labelled with."""


# The quality gate (export/quality_gate.py): what a reduced precision draws, one class per
# metric (a result failing several raises the class of the first).


class QualityError(ValidationError):
    """A reduced-precision artifact draws differently from FP32 (per-seed PSNR, distribution, digits
    score): nothing is published. ``artifact`` names the refused artifact ("int8", "fp16"...)."""

    def __init__(self, message: str, artifact: str | None = None) -> None:
        super().__init__(message)
        self.artifact = artifact


class UnscorableError(QualityError):
    """The quality gate cannot score this generator (FP32's samples have no noise floor or are not
    finite), so no reduced precision can be gated."""


class PrecisionOverflowError(QualityError):
    """NaN or Inf in a reduced precision's samples: a value passed that precision's range."""


class PictureQualityError(QualityError):
    """Per-seed PSNR against FP32's images below the precision's bounds."""


class DistributionError(QualityError):
    """The samples' Frechet distance to FP32's beyond the bound over FP32's own noise floor."""


class DigitsScoreError(QualityError):
    """A digits model's label accuracy or Frechet ratio to real digits moved beyond its bound."""


# The exporters (export/onnx_graph.py, rewrite.py, symbolic_batch.py, int8.py, tensorrt_build.py)


class ExporterError(ExportError):
    """torch.onnx.export failed with every exporter it has."""


class BatchConstantError(ExportError):
    """A model that makes the batch a constant in a way gendeploy cannot undo."""


class BatchGroupedConvError(ExportError):
    """A convolution with groups = batch that only a torch.export capture could rewrite, and the
    capture failed."""


class RewriteError(ExportError):
    """A batch-grouped convolution gendeploy cannot rewrite, or whose rewrite changed the output
    or does not run."""


class OnnxCheckError(ExportError):
    """A written ONNX file that onnx.checker refuses."""


class RandomOpError(ExportError):
    """A graph holding an op that draws random numbers (RandomNormalLike...), whatever its
    weights."""


class QuantizationError(ExportError):
    """INT8 post-training quantization itself failed (NNCF could not quantize the graph)."""


class EngineBuildError(ExportError):
    """TensorRT could not parse the ONNX or build the engine."""


class Interrupted(BaseException):
    """SIGTERM or SIGHUP while an export runs, raised so that every ``finally`` runs (staging
    removed, locks let go); a BaseException, so no ``except Exception`` swallows it. The CLI
    exits 128 + the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def restated(error: E, message: str) -> E:
    """``error`` with another message, its class and attributes kept (a caller can still tell
    what failed)."""
    again = copy.copy(error)
    again.args = (message,)
    return again


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
