"""`gendeploy train` and `gendeploy eval`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from gendeploy.cli.help import LateHelp, Params
from gendeploy.cli.options import Threads, use_threads
from gendeploy.errors import UsageError
from gendeploy.trainer.config import DEFAULT_PRESET, Arch, DatasetName, PresetName, preset

if TYPE_CHECKING:
    from gendeploy.trainer.quality import QualityReport

Opt = typer.Option

# train flags whose default is the preset's value -> (config, field)
PRESET_DEFAULTS = {
    "arch": ("model", "arch"),
    "dataset": ("train", "dataset"),
    "image_size": ("model", "image_size"),
    "channels": ("model", "image_channels"),
    "num_classes": ("model", "num_classes"),
    "width": ("model", "width"),
    "latent_dim": ("model", "latent_dim"),
    "steps": ("train", "steps"),
    "batch_size": ("train", "batch_size"),
    "lr": ("train", "lr"),
    "ema": ("train", "ema_decay"),
    "seed": ("train", "seed"),
    "sample_every": ("train", "sample_every"),
    "checkpoint_every": ("train", "checkpoint_every"),
}
# config field -> the flag that sets it, for messages (--channels sets image_channels)
FLAGS = {field: "--" + flag.replace("_", "-") for flag, (_, field) in PRESET_DEFAULTS.items()}


class TrainHelp(LateHelp):
    """``--steps`` and the like default to the preset's value: help shows the default preset's."""

    def fill(self, params: Params) -> None:
        chosen = preset(DEFAULT_PRESET)
        for name, (config, field) in PRESET_DEFAULTS.items():
            value = getattr(chosen.model if config == "model" else chosen.train, field)
            value = getattr(value, "value", value)  # str enums: their value
            params[name].show_default = f"from --preset; {DEFAULT_PRESET}: {value}"


def train_command(
    preset_name: Annotated[
        PresetName | None,
        Opt(
            "--preset",
            help="Model and training settings to start from. With --resume, the run must be that "
            "preset (with the flags given).",
            show_default=DEFAULT_PRESET,
        ),
    ] = None,
    out: Annotated[Path | None, Opt(help="Run directory.", show_default="runs/<preset>")] = None,
    arch: Annotated[Arch | None, Opt(help="Override the model's architecture.")] = None,
    dataset: Annotated[DatasetName | None, Opt(help="Override the training images.")] = None,
    data_path: Annotated[Path | None, Opt(help="Directory of the dataset's files.")] = None,
    image_size: Annotated[int | None, Opt(help="Image side (dcgan: 32 or 64).")] = None,
    channels: Annotated[int | None, Opt(help="Image channels, 1 or 3.")] = None,
    num_classes: Annotated[
        int | None, Opt(help="Classes for a conditional model; 0: unconditional.")
    ] = None,
    width: Annotated[int | None, Opt(help="Feature width (DCGAN ngf/ndf).")] = None,
    latent_dim: Annotated[int | None, Opt(help="Latent size.")] = None,
    steps: Annotated[int | None, Opt(help="Total training steps.")] = None,
    batch_size: Annotated[int | None, Opt(help="Batch size per process.")] = None,
    lr: Annotated[float | None, Opt(help="Adam learning rate.")] = None,
    ema: Annotated[float | None, Opt(help="Generator EMA decay; 0 disables.")] = None,
    seed: Annotated[int | None, Opt(help="Random seed.")] = None,
    sample_every: Annotated[int | None, Opt(help="Steps between sample grids.")] = None,
    checkpoint_every: Annotated[int | None, Opt(help="Steps between checkpoints.")] = None,
    no_eval: Annotated[bool, Opt("--no-eval", help="Skip the final quality report.")] = False,
    resume: Annotated[bool, Opt(help="Continue the run in --out from its checkpoint.")] = False,
    force: Annotated[bool, Opt(help="Replace an existing run directory.")] = False,
    progress: Annotated[bool, Opt(help="Show a progress bar.")] = True,
    device: Annotated[
        str, Opt(help="auto (CUDA where present, else CPU), cpu, cuda or cuda:N.")
    ] = "auto",
    threads: Threads = None,
) -> None:
    """Train a GAN generator; writes checkpoint, samples, loss curve and quality report.

    With --resume the run in --out (default runs/<preset>) continues with its own settings (flags
    may repeat them); only --steps, --sample-every, --checkpoint-every and --no-eval may change.
    """
    from gendeploy.trainer.config import with_overrides
    from gendeploy.trainer.train import resumed_configs, train

    if channels is not None and channels not in (1, 3):
        raise UsageError(f"--channels must be 1 or 3, got {channels}")
    settings = {
        "arch": arch,
        "image_size": image_size,
        "image_channels": channels,
        "num_classes": num_classes,
        "width": width,
        "latent_dim": latent_dim,
        "dataset": dataset,
        "data_path": str(data_path.resolve()) if data_path else None,  # resumable from anywhere
        "batch_size": batch_size,
        "lr": lr,
        "ema_decay": ema,
        "seed": seed,
    }
    schedule = {
        "steps": steps,
        "sample_every": sample_every,
        "checkpoint_every": checkpoint_every,
        "eval_at_end": False if no_eval else None,
    }
    name = preset_name.value if preset_name else None
    run_dir = out or Path("runs") / (name or DEFAULT_PRESET)
    if resume:  # the run's own settings; flags (and a named preset) that repeat them are fine
        model, config, step = resumed_configs(run_dir, settings, schedule, name, flags=FLAGS)
        typer.echo(f"resuming {run_dir} from step {step} (checkpoint.pt) to step {config.steps}")
    else:
        model, config = with_overrides(preset(name or DEFAULT_PRESET), **settings, **schedule)
    use_threads(threads)  # the progress bar and metrics.jsonl show the count each step ran with
    result = train(
        model, config, run_dir, resume=resume, force=force, progress=progress, device=device
    )
    if os.environ.get("RANK", "0") != "0":
        return  # under torchrun, rank 0 alone reports
    if result.quality is not None:
        _print_quality(result.quality)
    if result.quality_skipped:
        typer.echo(f"quality report skipped: {result.quality_skipped}")
    typer.echo(f"run written to {run_dir}/ (checkpoint.pt, samples/, loss.png, metrics.jsonl)")


def eval_command(
    checkpoint: Annotated[
        Path, typer.Argument(help="A checkpoint written by gendeploy train (or its run directory).")
    ],
    seed: Annotated[int, Opt(help="Seed for the generated samples.")] = 0,
) -> None:
    """Score a checkpoint on digits: label accuracy, class coverage, Frechet distance."""
    from gendeploy.export.source import resolve_checkpoint
    from gendeploy.trainer.quality import evaluate_checkpoint

    _print_quality(evaluate_checkpoint(resolve_checkpoint(checkpoint), seed))


def _print_quality(q: QualityReport) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sample quality (digits classifier)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_row("classifier held-out accuracy", f"{q.classifier_accuracy:.2%}")
    if q.label_accuracy is not None:
        table.add_row("label accuracy", f"{q.label_accuracy:.2%}")
    table.add_row("classes covered (>= 5%)", f"{q.classes_covered}/10")
    table.add_row("Frechet distance (generated vs held-out)", f"{q.frechet:.3f}")
    table.add_row("Frechet baseline (train vs held-out)", f"{q.frechet_baseline:.3f}")
    table.add_row("Frechet ratio", f"{q.frechet_ratio:.2f}x")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("train", cls=TrainHelp)(train_command)
    app.command("eval")(eval_command)
