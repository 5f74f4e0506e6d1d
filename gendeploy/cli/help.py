"""Help rendering shared by every command: flags without a type label, and help text filled in
only when help is shown."""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand, TyperGroup, TyperOption

Params = dict[str, Any]  # parameter name -> typer's TyperOption / TyperArgument


def _untype_flags(command: Any, ctx: Any) -> None:
    """typer 0.29's rich help labels every flag ``<bool>`` (``--help`` too), though a flag takes
    no value and click's plain help shows none; an empty metavar leaves the type column empty.
    The metavar of a flag is used for nothing else."""
    for param in command.get_params(ctx):  # with the help option, which typer adds per context
        if isinstance(param, TyperOption) and param.is_flag:
            param.metavar = ""


class Group(TyperGroup):
    """The ``gendeploy`` group: its own help and each command's show flags without a type."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _untype_flags(command, ctx)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _untype_flags(self, ctx)
        super().format_help(ctx, formatter)


class LateHelp(TyperCommand):
    """A command whose help needs values from a heavy module (torch, for the presets or the
    runner names): ``fill`` sets them on the parameters when help is shown, so that running the
    command, or another one, does not pay for the import."""

    def fill(self, params: Params) -> None:
        raise NotImplementedError

    def format_help(self, ctx: Any, formatter: Any) -> None:
        self.fill({p.name: p for p in self.params if p.name})
        super().format_help(ctx, formatter)
