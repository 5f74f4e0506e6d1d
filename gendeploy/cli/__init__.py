"""The ``gendeploy`` command: a thin typer app; each command forwards to one library function."""

from __future__ import annotations

import sys

import typer

from gendeploy.cli import bench, deploy, export, serve, soak, train, tune
from gendeploy.cli.help import Group
from gendeploy.errors import GendeployError, describe_os_error

app = typer.Typer(
    cls=Group,
    name="gendeploy",
    help="Train a GAN, export verified ONNX/TensorRT engines, serve them with Triton, bench them.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
for _module in (train, export, serve, bench, soak, tune, deploy):
    _module.register(app)


def main() -> None:
    """Console entry point: a ``GendeployError`` or a file-system error becomes one line on
    stderr and a non-zero exit code."""
    try:
        app()
    except GendeployError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:  # disk full, read-only, permissions, a file in the way
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        sys.exit(1)
