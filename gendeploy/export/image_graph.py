"""torch -> ONNX for an image-to-image model: one input ``input_images`` [N, C, H, W] and one
output ``images`` [N, C', s*H, s*W], batch, height and width dynamic.

The TorchScript exporter is tried first and torch.export's (dynamo) second: both export every
model here with dynamic sides and run on ONNX Runtime and OpenVINO within 7.4e-6 of eager at
every shape tried, but TorchScript took 0.2-1.2 s where dynamo took 7-31 s for the same tiny
models (docs/image-to-image.md). The example input is non-square and twice the size multiple on
its short side, so neither exporter can mistake a side for a constant.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch
from torch import nn

from gendeploy.errors import ExporterError
from gendeploy.export.onnx_graph import (
    OUTPUT,
    Exported,
    _disk_error,
    _first_line,
    _quiet_exporter,
    _silenced_descriptors,
    check,
)
from gendeploy.manifest import INPUT_IMAGES

OPSET = 17


def example_input(channels: int, multiple: int, min_side: int) -> torch.Tensor:
    """A seeded batch of 2, sides ``2 * multiple`` (at least the smallest, at least 16) by one
    multiple more."""
    side = max(min_side, 2 * multiple, -(-16 // multiple) * multiple)
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, channels, side, side + multiple, generator=generator) * 2 - 1


def export_image(module: nn.Module, path: Path, example: torch.Tensor) -> Exported:
    """Export ``module`` to ``path`` with dynamic N, H, W; one-line ``ExporterError`` if both
    exporters fail."""
    module = module.eval()
    errors: list[str] = []
    with _quiet_exporter():
        for exporter, run in (("torchscript", _torchscript), ("dynamo", _dynamo)):
            try:
                run(module, example, path)
            except Exception as e:
                disk = _disk_error(e)
                if disk is not None:  # no other exporter can write to a full or read-only disk
                    raise OSError(disk.errno, disk.strerror, str(path)) from None
                errors.append(f"{exporter}: {_first_line(e)}")
                continue
            sidecar = path.with_name(path.name + ".data")
            if sidecar.exists():
                raise ExporterError(f"the exporter wrote external data {sidecar.name}")
            model = onnx.load(str(path))
            if _inline_identities(model):
                onnx.save_model(model, str(path), save_as_external_data=False)
            check(path)
            return Exported(exporter)
    raise ExporterError(f"torch.onnx.export failed: {'; '.join(errors)}")


def _torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    axes = {
        INPUT_IMAGES: {0: "batch", 2: "height", 3: "width"},
        OUTPUT: {0: "batch", 2: "out_height", 3: "out_width"},
    }
    with _silenced_descriptors():
        torch.onnx.export(
            module,
            (example,),
            str(path),
            input_names=[INPUT_IMAGES],
            output_names=[OUTPUT],
            dynamic_axes=axes,
            opset_version=OPSET,
            dynamo=False,
        )


def _dynamo(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    dim = torch.export.Dim.DYNAMIC
    torch.onnx.export(
        module,
        (example,),
        str(path),
        input_names=[INPUT_IMAGES],
        output_names=[OUTPUT],
        dynamic_shapes=({0: dim, 2: dim, 3: dim},),  # positional: any name of forward's argument
        external_data=False,
        dynamo=True,
    )


def _inline_identities(model: onnx.ModelProto) -> int:
    """Replace each ``Identity`` of a weight by a copy of the weight under its output's name.
    TorchScript writes one where two layers share equal weights (the same tensor deduplicated),
    and the FP16 converter casts the weight but not the Identity's recorded type, which
    ``onnx.checker`` then refuses. Returns how many were replaced."""
    graph = model.graph
    weights = {i.name: i for i in graph.initializer}
    found = [n for n in graph.node if n.op_type == "Identity" and n.input[0] in weights]
    for node in found:
        copy = onnx.TensorProto()
        copy.CopyFrom(weights[node.input[0]])
        copy.name = node.output[0]
        graph.initializer.append(copy)
        graph.node.remove(node)
    return len(found)
