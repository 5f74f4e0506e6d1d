"""The training loop: non-saturating GAN loss with logits, Adam, optional generator EMA, DDP.

One run writes one directory ``runs/<name>/``: ``checkpoint.pt`` (self-describing, atomic),
``config.json``, ``metrics.jsonl``, ``samples/step_XXXXXX.png``, ``loss.png``, ``quality.json``.
Under torchrun every rank trains on its own random batches; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed
import torch.nn.functional as F
from torch import nn

from gendeploy import cpus
from gendeploy.errors import CheckpointError, UsageError
from gendeploy.trainer.checkpoint import Checkpoint, load_checkpoint, load_state_into
from gendeploy.trainer.config import (
    RESUMABLE_CHANGES,
    ModelConfig,
    Preset,
    TrainConfig,
    preset,
    with_overrides,
)
from gendeploy.trainer.data import load_dataset
from gendeploy.trainer.models import (
    build_discriminator,
    build_generator,
    init_weights,
)
from gendeploy.trainer.rundir import (
    CHECKPOINT_NAME,
    RunWriter,
    TrainResult,
    check_run_dir,
    clear_run_dir,
)


@dataclass
class _Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def training_device(requested: str | None = "cpu") -> torch.device:
    """ "cpu", "cuda", "cuda:N" or "auto": CUDA when every local process gets its own GPU, else
    the CPU. Under torchrun, "cuda" means this process's GPU, ``cuda:$LOCAL_RANK``."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if requested in (None, "auto"):
        gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
        requested = "cuda" if gpus >= local_world else "cpu"
    try:
        device = torch.device(str(requested))
    except RuntimeError:
        raise UsageError(f"--device {requested!r}: use auto, cpu, cuda or cuda:N") from None
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise UsageError(f"--device {requested!r}: use auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        raise UsageError(f"--device {requested}: torch sees no CUDA device here; use --device cpu")
    if device.index is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError(f"--device {device}: under torchrun pass --device cuda (one GPU per rank)")
    if device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.index >= torch.cuda.device_count():
        raise UsageError(
            f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) for "
            f"{local_world} local process(es)"
        )
    torch.cuda.set_device(device)
    return device


def _init_distributed(device: torch.device) -> _Dist:
    """torchrun sets WORLD_SIZE/RANK: gloo on CPU, nccl on GPU (one GPU per process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return _Dist()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return _Dist(dist.get_rank(), dist.get_world_size())


def _ddp(module: nn.Module, dist: _Dist, device: torch.device) -> nn.Module:
    if dist.world == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    # The auxiliary class head gets no gradient from the fake-image pass: allow unused params.
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, find_unused_parameters=True)


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        for p_ema, p in zip(ema.parameters(), model.parameters(), strict=True):
            p_ema.lerp_(p, 1 - decay)


@dataclass
class _Training:
    """Everything the loop works on, built and checked by ``_setup`` before any step runs."""

    model_config: ModelConfig
    config: TrainConfig
    dev: torch.device
    dist: _Dist
    images: torch.Tensor  # the whole dataset on the device
    labels: torch.Tensor
    generator: nn.Module
    discriminator: nn.Module
    g_train: nn.Module  # the same networks, wrapped for DDP under torchrun
    d_train: nn.Module
    ema: nn.Module | None
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    run: RunWriter
    rng: torch.Generator
    start_step: int


def train(
    model_config: ModelConfig,
    train_config: TrainConfig,
    out: Path,
    resume: bool = False,
    force: bool = False,
    progress: bool = True,
    device: str = "cpu",
) -> TrainResult:
    """Train a GAN into run directory ``out``; returns the last step and the quality report.

    Everything is checked (run directory, checkpoint, dataset) before an existing run is replaced.
    """
    t = _setup(model_config, train_config, out, resume, force, device)
    run, last = t.run, train_config.steps
    t0 = time.perf_counter()
    bar = run.progress(t.start_step, last, progress)
    for step in range(t.start_step + 1, last + 1):
        threads = cpus.adapt()  # fewer while a co-tenant keeps a core busy (gendeploy.cpus)
        metrics = _step(t, step)
        elapsed = time.perf_counter() - t0
        metrics["steps_per_s"] = (step - t.start_step) / elapsed if elapsed > 0 else 0.0
        metrics["threads"] = threads
        run.log(metrics, bar)
        if run.main and (step % train_config.sample_every == 0 or step == last):
            run.samples(run.deployable(t.generator, t.ema, step), step)
        if step % train_config.checkpoint_every == 0 or step == last:
            run.checkpoint(step, t.generator, t.discriminator, t.ema, t.opt_g, t.opt_d)
    if bar is not None:
        bar.stop()
    result = run.finish()
    if t.dist.world > 1:
        # Rank 0 is still writing when the others finish: tearing gloo down under it aborts.
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return result


def _step(t: _Training, step: int) -> dict[str, float]:
    """One discriminator and one generator update; the step's losses and D's outputs."""
    config, rng, dev = t.config, t.rng, t.dev
    bs, k = config.batch_size, t.model_config.num_classes
    idx = torch.randint(0, len(t.images), (bs,), generator=rng).to(dev)
    real, real_y = t.images[idx], t.labels[idx] if k else None
    z = torch.randn(bs, t.model_config.latent_dim, generator=rng).to(dev)
    fake_y = torch.randint(0, k, (bs,), generator=rng) if k else None
    if fake_y is not None and config.diversity_weight:
        fake_y[bs // 2 : 2 * (bs // 2)] = fake_y[: bs // 2]  # pairs of z under one label
    fake_y = fake_y.to(dev) if fake_y is not None else None

    # Discriminator: real -> 1, fake -> 0, in logits (softplus form is numerically stable).
    fake = t.g_train(z, fake_y)
    logit_real, cls_real = t.d_train(_augment(real, config.translate, rng), real_y)
    loss_d_real = F.softplus(-logit_real).mean()
    if cls_real is not None and real_y is not None:
        loss_d_real = loss_d_real + config.aux_weight * F.cross_entropy(cls_real, real_y)
    t.opt_d.zero_grad(set_to_none=True)
    loss_d_real.backward()
    logit_fake, _ = t.d_train(_augment(fake.detach(), config.translate, rng), fake_y)
    loss_d_fake = F.softplus(logit_fake).mean()
    loss_d_fake.backward()
    t.opt_d.step()

    # Generator: non-saturating loss -log D(G(z)) (the seed's log(1 - D) saturates).
    # D's gradients from this pass are discarded: no DDP all-reduce for them.
    with t.d_train.no_sync() if t.dist.world > 1 else contextlib.nullcontext():  # type: ignore[operator]
        loss_g = _generator_loss(t.d_train, fake, fake_y, z, config, rng)
        t.opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
    t.opt_g.step()
    if t.ema is not None:
        # Warm-up: early on the average must not be dominated by the random initialisation.
        _ema_update(t.ema, t.generator, min(config.ema_decay, (1 + step) / (10 + step)))
    return {
        "step": step,
        "loss_d": float((loss_d_real + loss_d_fake).detach()),
        "loss_g": float(loss_g.detach()),
        "d_real": float(torch.sigmoid(logit_real.detach()).mean()),
        "d_fake": float(torch.sigmoid(logit_fake.detach()).mean()),
    }


def _setup(
    model_config: ModelConfig,
    train_config: TrainConfig,
    out: Path,
    resume: bool,
    force: bool,
    device: str,
) -> _Training:
    """Device, DDP, data, networks, optimizers, the restored state of a resumed run, the run
    directory: everything checked before an existing run is replaced."""
    dev = training_device(device)
    dist = _init_distributed(dev)
    check_run_dir(out, resume, force)
    start_step, ckpt = 0, None
    if resume:
        ckpt = load_checkpoint(out / CHECKPOINT_NAME)
        _check_resumable(ckpt, model_config, train_config, out / CHECKPOINT_NAME)
        start_step = ckpt.step
    data = load_dataset(
        train_config.dataset,
        model_config.image_size,
        model_config.image_channels,
        Path(train_config.data_path) if train_config.data_path else None,
    )
    if model_config.conditional and data.num_classes > model_config.num_classes:
        raise UsageError(
            f"dataset {train_config.dataset.value} has {data.num_classes} classes but the model "
            f"has --num-classes {model_config.num_classes}"
        )

    torch.manual_seed(train_config.seed)
    generator = build_generator(model_config)
    discriminator = build_discriminator(model_config)
    generator.apply(init_weights)
    discriminator.apply(init_weights)
    generator.to(dev)
    discriminator.to(dev)
    ema = copy.deepcopy(generator).eval() if train_config.ema_decay else None
    opt_g = torch.optim.Adam(generator.parameters(), lr=train_config.lr, betas=train_config.betas)
    opt_d = torch.optim.Adam(
        discriminator.parameters(), lr=train_config.lr, betas=train_config.betas
    )
    if ckpt is not None:
        _restore(ckpt, str(out / CHECKPOINT_NAME), generator, discriminator, ema, opt_g, opt_d)
    g_train, d_train = _ddp(generator, dist, dev), _ddp(discriminator, dist, dev)

    if dist.main and not resume:
        clear_run_dir(out)  # --force: everything above has been checked
    run = RunWriter(out, model_config, train_config, dist.main, start_step)
    # Each rank (and each resumed segment) draws its own batches, reproducibly.
    rng = torch.Generator().manual_seed(train_config.seed * 1000 + dist.rank + 7919 * start_step)
    # Random numbers come from the CPU generator on every device, so a seed means one thing.
    return _Training(
        model_config=model_config,
        config=train_config,
        dev=dev,
        dist=dist,
        images=data.images.to(dev),
        labels=data.labels.to(dev),
        generator=generator,
        discriminator=discriminator,
        g_train=g_train,
        d_train=d_train,
        ema=ema,
        opt_g=opt_g,
        opt_d=opt_d,
        run=run,
        rng=rng,
        start_step=start_step,
    )


def _restore(
    ckpt: Checkpoint,
    source: str,
    generator: nn.Module,
    discriminator: nn.Module,
    ema: nn.Module | None,
    opt_g: torch.optim.Optimizer,
    opt_d: torch.optim.Optimizer,
) -> None:
    """A resumed run's networks, optimizers and EMA, from its checkpoint."""
    load_state_into(generator, ckpt.generator, source)
    if ckpt.discriminator is None or ckpt.optimizer_g is None or ckpt.optimizer_d is None:
        raise CheckpointError(f"{source} holds no training state (was it exported only?)")
    load_state_into(discriminator, ckpt.discriminator, source)
    try:
        opt_g.load_state_dict(ckpt.optimizer_g)
        opt_d.load_state_dict(ckpt.optimizer_d)
    except (KeyError, ValueError, TypeError) as e:
        raise CheckpointError(f"{source} has a damaged optimizer state ({e})") from None
    if ema is not None and ckpt.generator_ema is not None:
        load_state_into(ema, ckpt.generator_ema, source)


def _saved_train_config(ckpt: Checkpoint, source: Path) -> TrainConfig:
    """The checkpoint's train config; fields it predates take their defaults."""
    try:
        return TrainConfig.from_dict(ckpt.train_config)
    except (CheckpointError, TypeError, ValueError, UsageError) as e:
        raise CheckpointError(f"{source} has an invalid train config: {e}") from None


def _check_resumable(
    ckpt: Checkpoint, model_config: ModelConfig, train_config: TrainConfig, source: Path
) -> None:
    if ckpt.model_config != model_config:
        raise CheckpointError(
            f"{source} was trained as {ckpt.model_config.to_dict()}, not "
            f"{model_config.to_dict()}; resume with the run's own settings"
        )
    saved, asked = _saved_train_config(ckpt, source).to_dict(), train_config.to_dict()
    changed = sorted(k for k in asked if k not in RESUMABLE_CHANGES and saved.get(k) != asked[k])
    if changed:
        raise CheckpointError(
            f"{source} was trained with other {', '.join(changed)}; a resumed run keeps its own "
            f"settings (only {', '.join(RESUMABLE_CHANGES)} may change)"
        )
    if train_config.steps <= ckpt.step:
        raise UsageError(
            f"{source} is already at step {ckpt.step}: pass --steps above it to train further"
        )


def _augment(images: torch.Tensor, translate: float, rng: torch.Generator) -> torch.Tensor:
    """Shift each image by up to ``translate`` of its side (differentiable; background -1)."""
    if not translate:
        return images
    n, size = len(images), images.shape[-1]
    limit = max(1, round(size * translate))
    shifts = torch.randint(-limit, limit + 1, (n, 2), generator=rng).float() * 2 / size
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = shifts
    theta = theta.to(images.device)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    shifted = F.grid_sample(images + 1, grid, mode="nearest", align_corners=False)
    return shifted - 1


def _generator_loss(
    d_train: nn.Module,
    fake: torch.Tensor,
    fake_y: torch.Tensor | None,
    z: torch.Tensor,
    config: TrainConfig,
    rng: torch.Generator,
) -> torch.Tensor:
    logit, cls = d_train(_augment(fake, config.translate, rng), fake_y)
    loss = F.softplus(-logit).mean()
    if cls is not None and fake_y is not None:
        loss = loss + config.aux_weight * F.cross_entropy(cls, fake_y)
    if config.diversity_weight:
        h = len(z) // 2
        image_gap = (fake[:h] - fake[h : 2 * h]).abs().mean()
        latent_gap = (z[:h] - z[h : 2 * h]).abs().mean()
        loss = loss + config.diversity_weight / (image_gap / latent_gap + 1e-5)
    return loss


def resumed_configs(
    out: Path,
    settings: dict[str, Any],
    schedule: dict[str, Any],
    preset_name: str | None = None,
    flags: Mapping[str, str] | None = None,
) -> tuple[ModelConfig, TrainConfig, int]:
    """The configs of the run in ``out`` and its step, from its checkpoint. ``settings`` (flags,
    None = not given) must agree with them, and so must the preset named with them, if any;
    ``schedule`` (``RESUMABLE_CHANGES``) is applied. ``flags`` names a setting in messages (the
    CLI's flag for each field; default ``--field-name``)."""
    check_run_dir(out, resume=True, force=False)
    source = out / CHECKPOINT_NAME
    ckpt = load_checkpoint(source)
    saved = Preset("resumed", ckpt.model_config, _saved_train_config(ckpt, source))
    model, config = with_overrides(saved, **settings)
    differ = [
        (flags or {}).get(k, f"--{k.replace('_', '-')}")
        for k in settings
        if getattr(model, k, None) != getattr(saved.model, k, None)
        or getattr(config, k, None) != getattr(saved.train, k, None)
    ]
    if differ:
        raise UsageError(
            f"--resume continues {out} with its own settings: drop {' '.join(differ)} or start a "
            "new run (only --steps, --sample-every, --checkpoint-every and --no-eval may change)"
        )
    if preset_name is not None:
        _check_preset(out, saved, preset_name, settings)
    return (*with_overrides(saved, **schedule), ckpt.step)


def _check_preset(out: Path, saved: Preset, name: str, settings: dict[str, Any]) -> None:
    """A preset named on resume must describe the run, like any other flag: the preset with the
    flags given must give the run's own configs (the schedule aside)."""
    model, config = with_overrides(preset(name), **settings)
    asked, had = (
        {**model.to_dict(), **config.to_dict()},
        {
            **saved.model.to_dict(),
            **saved.train.to_dict(),
        },
    )
    differ = [
        f"{k} ({had[k]} here)" for k in asked if k not in RESUMABLE_CHANGES and asked[k] != had[k]
    ]
    if differ:
        raise UsageError(
            f"--resume: {out} is not a --preset {name} run: it differs in {', '.join(differ)}; "
            "drop --preset to continue it with its own settings, or start a new run"
        )
