"""The ``gendeploy`` command: a thin typer app; each command forwards to one library function."""

from __future__ import annotations

import sys

import typer

from gendeploy.cli import bench, export, serve, train
from gendeploy.cli.help import Group
from gendeploy.errors import GendeployError

app = typer.Typer(
    cls=Group,
    name="gendeploy",
    help="Train a GAN, export verified ONNX/TensorRT engines, serve them with Triton, bench them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _module in (train, export, serve, bench):
    _module.register(app)


def main() -> None:
    """Console entry point: a ``GendeployError`` becomes one line on stderr and its exit code."""
    try:
        app()
    except GendeployError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
