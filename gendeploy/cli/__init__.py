"""The ``gendeploy`` command: a thin typer app; each command forwards to one library function."""

from __future__ import annotations

import signal
import sys

import typer

from gendeploy.cli import bench, deploy, export, serve, soak, train, tune
from gendeploy.cli.help import Group
from gendeploy.errors import GendeployError, Interrupted, describe_os_error

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

# click's UsageError (bad choices, unknown options, missing arguments): typer vendors click and
# exports only its subclass BadParameter
UsageError: type[Exception] = typer.BadParameter.__mro__[1]


def main() -> None:
    """Console entry point: a ``GendeployError`` or a file-system error becomes one line on
    stderr and a non-zero exit code."""
    try:
        code = app(standalone_mode=False)
    except UsageError as e:  # a flag typer checked: a bad choice, an unknown option
        if type(e).__name__ != "NoArgsIsHelpError":  # bare `gendeploy`: its help is shown already
            print(f"error: {e.format_message()}", file=sys.stderr)  # type: ignore[attr-defined]
        sys.exit(e.exit_code)  # type: ignore[attr-defined]
    except typer.Abort:  # Ctrl-C at a prompt
        print("aborted", file=sys.stderr)
        sys.exit(1)
    except Interrupted as e:  # a signal during an export (export_command); every finally ran
        print(f"interrupted ({signal.Signals(e.signum).name}): nothing published", file=sys.stderr)
        sys.exit(128 + e.signum)
    except GendeployError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    except OSError as e:  # disk full, read-only, permissions, a file in the way
        print(f"error: {describe_os_error(e)}", file=sys.stderr)
        sys.exit(1)
    if isinstance(code, int) and code:  # typer.Exit(code) in a command (standalone_mode=False)
        sys.exit(code)
