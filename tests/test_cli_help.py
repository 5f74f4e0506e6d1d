"""What `gendeploy ... --help` tells a new user: no type on flags, defaults that say where they
come from, the names a flag accepts."""

from __future__ import annotations

import re

import pytest
from cli_support import cli

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
