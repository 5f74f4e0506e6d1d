"""The run directory ``runs/<name>/`` and what rank 0 writes into it: ``checkpoint.pt``
(atomic), ``config.json``, ``metrics.jsonl``, ``samples/step_XXXXXX.png``, ``loss.png`` and the
quality report."""

from __future__ import annotations

import copy
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from gendeploy import images
from gendeploy.errors import CheckpointError, UsageError
from gendeploy.fileio import atomic_write
from gendeploy.trainer import plots
from gendeploy.trainer.checkpoint import Checkpoint, save_checkpoint
from gendeploy.trainer.config import DatasetName, ModelConfig, TrainConfig
from gendeploy.trainer.models import recalibrate_batchnorm

if TYPE_CHECKING:
    from gendeploy.trainer.quality import QualityReport

CHECKPOINT_NAME = "checkpoint.pt"


def unwrap(module: nn.Module) -> nn.Module:
    inner = getattr(module, "module", module)
    assert isinstance(inner, nn.Module)
    return inner


RUN_MARKERS = ("config.json", CHECKPOINT_NAME)  # written first, and by every checkpoint


def check_run_dir(out: Path, resume: bool, force: bool) -> None:
    """Refuse to touch an existing run unless asked to resume it or overwrite it; every refusal
    gives the one flag that works for what is in ``out``."""
    if resume and force:
        raise UsageError("--resume and --force contradict each other: pick one")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; pass a directory for the run")
    started = out.is_dir() and any(out.iterdir())
    is_run = any((out / name).exists() for name in RUN_MARKERS)
    has_checkpoint = (out / CHECKPOINT_NAME).is_file()
    if started and not is_run:
        what = "--force would delete" if force else "--out"
        raise UsageError(
            f"{what} {out}, which is not a gendeploy run directory (no "
            f"{' or '.join(RUN_MARKERS)}): choose another --out"
        )
    if resume:
        if has_checkpoint:
            return
        if is_run:  # killed before its first checkpoint: nothing to resume from
            raise CheckpointError(
                f"--resume: {out} has no {CHECKPOINT_NAME} yet (the run stopped before its "
                "first checkpoint); start it over with --force instead of --resume"
            )
        raise CheckpointError(f"--resume: no run in {out}; start without --resume")
    if not started or force:
        return
    if not has_checkpoint:
        raise UsageError(
            f"run directory {out} already exists but has no {CHECKPOINT_NAME} (it stopped "
            "before its first checkpoint): pass --force to start it over"
        )
    raise UsageError(
        f"run directory {out} already exists; pass --resume to continue it or --force "
        "to start over (its files are replaced)"
    )


def clear_run_dir(out: Path) -> None:
    """Remove the run being replaced (``--force``), once everything else has been checked."""
    if out.exists():
        shutil.rmtree(out)


@dataclass(frozen=True)
class TrainResult:
    """What ``train`` returns: the last step, and the final checkpoint's quality report or why
    there is none."""

    steps: int
    quality: QualityReport | None = None  # digits runs that were scored at the end
    quality_skipped: str = ""  # why a run asked to be scored was not ("" otherwise)


class RunWriter:
    """What rank 0 writes into the run directory; on other ranks every method does nothing."""

    def __init__(
        self, out: Path, model: ModelConfig, train: TrainConfig, main: bool, start_step: int
    ) -> None:
        self.out, self.model, self.train, self.main = out, model, train, main
        self.history: list[dict[str, float]] = []
        if not main:
            return
        out.mkdir(parents=True, exist_ok=True)
        config = {"model": model.to_dict(), "train": train.to_dict()}
        atomic_write(out / "config.json", lambda f: f.write(json.dumps(config, indent=2).encode()))
        metrics = out / "metrics.jsonl"
        if metrics.is_file():
            self.history = read_metrics(metrics)
            self._truncate_metrics(start_step)  # steps after the last checkpoint are re-run
        # Fixed noise (and every label, for conditional models) so sample grids are comparable.
        g = torch.Generator().manual_seed(12345)
        k = model.num_classes
        rows = k if k else 8
        self.sample_z = torch.randn(rows * 8, model.latent_dim, generator=g)
        self.sample_y = torch.arange(k).repeat_interleave(8) if k else None

    def progress(self, start: int, total: int, enabled: bool) -> Any:
        if not (self.main and enabled):
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("[bold]train"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeRemainingColumn(),
        )
        bar.start()
        bar.add_task("train", total=total, completed=start, status="")
        return bar

    def log(self, metrics: dict[str, float], bar: Any) -> None:
        if not self.main:
            return
        self.history.append(metrics)
        with (self.out / "metrics.jsonl").open("a") as f:
            f.write(json.dumps(metrics) + "\n")
        if bar is not None:
            status = (
                f"loss_d {metrics['loss_d']:.3f} loss_g {metrics['loss_g']:.3f} "
                f"{metrics['steps_per_s']:.1f} steps/s"
            )
            if "threads" in metrics:
                status += f" ({int(metrics['threads'])} threads)"
            bar.update(bar.task_ids[0], completed=int(metrics["step"]), status=status)

    def deployable(self, generator: nn.Module, ema: nn.Module | None, step: int) -> nn.Module:
        """What export will ship: an eval-mode copy; the EMA one with recalibrated BatchNorm."""
        deployed = copy.deepcopy(unwrap(ema if ema is not None else generator))
        if ema is not None:
            recalibrate_batchnorm(deployed, self.model, seed=step)
        return deployed.eval()

    def samples(self, generator: nn.Module, step: int) -> None:
        """``generator`` is the deployable (eval-mode) one."""
        if not self.main:
            return
        device = next(generator.parameters()).device
        y = None if self.sample_y is None else self.sample_y.to(device)
        with torch.no_grad():
            samples = generator(self.sample_z.to(device), y).cpu()
        images.save_grid(samples, self.out / "samples" / f"step_{step:06d}.png", nrow=8)

    def checkpoint(
        self,
        step: int,
        generator: nn.Module,
        discriminator: nn.Module,
        ema: nn.Module | None,
        opt_g: torch.optim.Optimizer,
        opt_d: torch.optim.Optimizer,
    ) -> None:
        if not self.main:
            return
        ema_state = self.deployable(generator, ema, step).state_dict() if ema is not None else None
        ckpt = Checkpoint(
            model_config=self.model,
            step=step,
            generator=unwrap(generator).state_dict(),
            train_config=self.train.to_dict(),
            generator_ema=ema_state,
            discriminator=unwrap(discriminator).state_dict(),
            optimizer_g=opt_g.state_dict(),
            optimizer_d=opt_d.state_dict(),
        )
        save_checkpoint(ckpt, self.out / CHECKPOINT_NAME)
        # Metrics written after this checkpoint would be replayed on resume: keep them in step.
        self._truncate_metrics(step)

    def _truncate_metrics(self, step: int) -> None:
        kept = [m for m in self.history if m["step"] <= step]
        if len(kept) != len(self.history) or step == 0:
            self.history = kept
            lines = "".join(json.dumps(m) + "\n" for m in kept)
            atomic_write(self.out / "metrics.jsonl", lambda f: f.write(lines.encode()))

    def finish(self) -> TrainResult:
        steps = int(self.history[-1]["step"]) if self.history else 0
        if not self.main:
            return TrainResult(steps)
        plots.save_loss_curve(self.history, self.out / "loss.png")
        from gendeploy.trainer.quality import evaluate_checkpoint, scorable

        if not self.train.eval_at_end:
            return TrainResult(steps)
        if self.train.dataset is not DatasetName.digits:
            skipped = (
                f"the quality report scores digits only, this run trained on "
                f"{self.train.dataset.value}"
            )
            return TrainResult(steps, quality_skipped=skipped)
        if not scorable(self.model):
            skipped = (
                f"the digits score needs an unconditional or 10-class model, this one has "
                f"{self.model.num_classes} classes"
            )
            return TrainResult(steps, quality_skipped=skipped)
        return TrainResult(steps, evaluate_checkpoint(self.out / CHECKPOINT_NAME))


def read_metrics(path: Path) -> list[dict[str, float]]:
    """Metrics lines; a last line cut short by a killed run is dropped."""
    history = []
    for line in path.read_text().splitlines():
        try:
            history.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return history
