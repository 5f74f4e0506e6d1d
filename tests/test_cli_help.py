"""What `gendeploy ... --help` tells a new user: no type on flags, defaults that say where they
come from, the names a flag accepts."""

from __future__ import annotations

import re
from typing import Any

import pytest
import typer.main
from cli_support import cli

from gendeploy.cli import app
from gendeploy.cli.train import DEFAULT_PRESET, PRESET_DEFAULTS
from gendeploy.runtime.registry import runner_names
from gendeploy.trainer import config


@pytest.fixture(autouse=True)
def wide_help(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # one line per option: rich wraps at the width


def _help(*command: str) -> str:
    code, stdout, stderr = cli(*command, "--help")
    assert code == 0, stderr
    return stdout


def _line(text: str, option: str) -> str:
    return next(line for line in text.splitlines() if re.search(rf"│ {option}\s", line))


@pytest.mark.parametrize("command", [(), ("train",), ("export",), ("bench",), ("serve",)])
def test_flags_are_not_labelled_as_taking_a_value(command: tuple[str, ...]) -> None:
    text = _help(*command)
    assert "<bool>" not in text
    assert "Show this message and exit." in _line(text, "--help")


def test_train_options_from_the_preset_show_the_presets_value() -> None:
    text = _help("train")
    chosen = config.PRESETS[DEFAULT_PRESET]
    assert f"from --preset; {DEFAULT_PRESET}: {chosen.train.steps}" in _line(text, "--steps")
    assert f"{DEFAULT_PRESET}: {chosen.model.num_classes}" in _line(text, "--num-classes")
    assert f"{DEFAULT_PRESET}: {chosen.train.lr}" in _line(text, "--lr")
    for option in PRESET_DEFAULTS:
        assert "from --preset" in _line(text, "--" + option.replace("_", "-"))
    assert "<int>" in _line(text, "--steps")  # options that take a value keep their type


def test_opt_batch_shows_its_real_default() -> None:
    line = _line(_help("export"), "--opt-batch")
    assert "min(8, --max-batch)" in line and "default: 0" not in line


def test_bench_runners_help_lists_every_runner() -> None:
    text = " ".join(_help("bench").replace("│", " ").split())  # the list may wrap
    assert "Known: " + ", ".join(runner_names()) + "." in text


@pytest.mark.parametrize(
    ("command", "option", "choices"),
    [
        (("train",), "--preset", [p.value for p in config.PresetName]),
        (("train",), "--dataset", [d.value for d in config.DatasetName]),
        (("train",), "--arch", [a.value for a in config.Arch]),
        (("export",), "--output", ["float", "uint8"]),
        (("export",), "--noise", ["const", "seeded"]),
        (("generate",), "--protocol", ["http", "grpc"]),
    ],
)
def test_choices_are_shown_by_typer_from_their_enum(
    command: tuple[str, ...], option: str, choices: list[str]
) -> None:
    assert f"<{'|'.join(choices)}>" in _line(_help(*command), option)


def test_every_preset_has_a_name_the_cli_offers() -> None:
    assert [p.value for p in config.PresetName] == list(config.PRESETS)


def _commands(command: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """Every command and subcommand of the real CLI, with its click object."""
    found = [(path, command)]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += _commands(sub, (*path, name))
    return found


EVERY_COMMAND = _commands(typer.main.get_command(app))
BOX = str.maketrans({c: " " for c in "│╭╮╰╯─"})


def _words(text: str) -> list[str]:
    return text.translate(BOX).split()


def _shown_in_order(words: list[str], shown: list[str]) -> bool:
    """Whether ``words`` appear in ``shown`` in order (a narrow help wraps the choices column
    beside the help column, so other words may come between)."""
    rest = iter(shown)
    return all(word in rest for word in words)


@pytest.mark.parametrize("columns", ["80", "200"])
@pytest.mark.parametrize(
    ("path", "command"), EVERY_COMMAND, ids=[" ".join(p) or "gendeploy" for p, _ in EVERY_COMMAND]
)
def test_every_help_renders_every_word_of_its_help_text(
    path: tuple[str, ...], command: Any, columns: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No help crashes at a narrow or a wide terminal, and no help string is read as markup by
    accident (rich drops what it takes for a tag: `pvc:CLAIM[/path]` crashed `deploy k8s`)."""
    monkeypatch.setenv("COLUMNS", columns)
    code, stdout, stderr = cli(*path, "--help")
    assert code == 0, stderr[-2000:]
    shown = _words(stdout)
    for param in command.params:
        if getattr(param, "help", None):
            assert _shown_in_order(_words(param.help), shown), (param.name, param.help)
    assert stderr == ""


@pytest.mark.parametrize(
    "path",
    [p for p, _ in EVERY_COMMAND],
    ids=[" ".join(p) or "gendeploy" for p, _ in EVERY_COMMAND],
)
def test_every_usage_error_is_one_line_and_exit_2(path: tuple[str, ...]) -> None:
    code, stdout, stderr = cli(*path, "--no-such-flag")
    assert code == 2 and stdout == ""
    assert stderr.strip().splitlines() == ["error: No such option: --no-such-flag"], stderr
