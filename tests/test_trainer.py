"""Trainer: models, configs, checkpoints, resume, bad input, CLI, DDP."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from gendeploy.errors import CheckpointError, DataError, UsageError
from gendeploy.trainer.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_generator,
    save_checkpoint,
)
from gendeploy.trainer.config import PRESETS, ModelConfig, TrainConfig, with_overrides
from gendeploy.trainer.models import (
    build_discriminator,
    build_generator,
    recalibrate_batchnorm,
)
from gendeploy.trainer.train import resumed_configs, train

GENDEPLOY = [sys.executable, "-m", "gendeploy"]
CONFIGS = [
    ModelConfig(arch=arch, image_size=size, image_channels=ch, num_classes=k, width=8)  # type: ignore[arg-type]
    for arch in ("mlp", "dcgan")
    for size, ch in ((32, 1), (64, 3))
    for k in (0, 10)
]


def _tiny_train(steps: int = 4, **kw: object) -> TrainConfig:
    base = dict(
        dataset="fake",
        steps=steps,
        batch_size=8,
        sample_every=2,
        checkpoint_every=2,
        eval_at_end=False,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


TINY = ModelConfig(arch="dcgan", image_size=32, num_classes=10, width=8)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: f"{c.arch.value}{c.image_size}c{c.num_classes}"
)
def test_every_model_has_the_documented_shapes_and_is_deterministic(config: ModelConfig) -> None:
    torch.manual_seed(0)
    generator = build_generator(config).eval()
    z = torch.randn(3, config.latent_dim)
    labels = torch.tensor([0, 4, 9]) if config.conditional else None
    images = generator(z, labels)
    assert images.shape == (3, *config.image_shape)
    assert images.min() >= -1 and images.max() <= 1
    assert torch.equal(images, generator(z, labels))
    logits, class_logits = build_discriminator(config)(images, labels)
    assert logits.shape == (3,)
    assert (class_logits is None) == (not config.conditional)


def test_conditional_generator_without_labels_is_refused() -> None:
    with pytest.raises(ValueError, match="conditional"):
        build_generator(TINY)(torch.randn(2, 100))


def test_model_config_round_trips_and_rejects_bad_values() -> None:
    assert ModelConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown model 'resnet'"):
        ModelConfig(arch="resnet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 or 64"):
        ModelConfig(arch="dcgan", image_size=48)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown model config fields"):
        ModelConfig.from_dict({**TINY.to_dict(), "depth": 3})


def test_unknown_dataset_and_preset_names_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="unknown dataset 'imagenet'"):
        TrainConfig(dataset="imagenet")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="unknown preset"):
        from gendeploy.trainer.config import preset

        preset("nope")


def test_checkpoint_round_trips_through_weights_only_load(tmp_path: Path) -> None:
    generator = build_generator(TINY)
    ckpt = Checkpoint(
        model_config=TINY, step=7, generator=generator.state_dict(), train_config={"steps": 7}
    )
    path = tmp_path / "c.pt"
    save_checkpoint(ckpt, path)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left behind
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "gendeploy-checkpoint" and raw["step"] == 7
    loaded, meta = load_generator(path)
    assert meta.model_config == TINY and meta.step == 7 and meta.versions["torch"]
    z, y = torch.randn(2, 100), torch.tensor([1, 2])
    assert torch.equal(loaded(z, y), generator.eval()(z, y))


class _Payload:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, ("touch pwned",))


def test_a_foreign_pickle_is_refused_without_being_executed(tmp_path: Path) -> None:
    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"generator": _Payload()}))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(CheckpointError, match="not a gendeploy checkpoint"):
            load_checkpoint(path)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(
    "content", [b"hello", b"\x80\x02}q\x00.", b"PK\x03\x04garbage", bytes(range(256))]
)
def test_arbitrary_bytes_are_refused_as_a_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a gendeploy checkpoint"):
        load_checkpoint(path)


def test_torch_files_that_are_not_checkpoints_are_refused(tmp_path: Path) -> None:
    state = tmp_path / "state.pt"
    torch.save(build_generator(TINY).state_dict(), state)
    with pytest.raises(CheckpointError, match=r"no 'gendeploy-checkpoint' marker"):
        load_checkpoint(state)
    truncated = tmp_path / "truncated.pt"
    save_checkpoint(Checkpoint(TINY, 1, build_generator(TINY).state_dict()), truncated)
    truncated.write_bytes(truncated.read_bytes()[:500])
    with pytest.raises(CheckpointError, match="not a gendeploy checkpoint"):
        load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    incomplete = tmp_path / "incomplete.pt"
    torch.save({"format": "gendeploy-checkpoint", "schema_version": 1,
                "model_config": TINY.to_dict()}, incomplete)  # fmt: skip
    with pytest.raises(CheckpointError, match="incomplete or damaged gendeploy checkpoint"):
        load_checkpoint(incomplete)


def test_weights_of_another_architecture_are_refused(tmp_path: Path) -> None:
    mlp = ModelConfig(arch="mlp", image_size=32, width=8)  # type: ignore[arg-type]
    path = tmp_path / "c.pt"
    save_checkpoint(Checkpoint(TINY, 1, build_generator(mlp).state_dict()), path)
    with pytest.raises(CheckpointError, match="do not fit DCGANGenerator"):
        load_generator(path)


def test_training_writes_a_complete_run_directory(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(
        TINY,
        _tiny_train(4, ema_decay=0.9, diversity_weight=1.0, translate=0.125),
        out,
        progress=False,
    )
    assert {p.name for p in out.iterdir()} >= {
        "checkpoint.pt",
        "config.json",
        "metrics.jsonl",
        "samples",
        "loss.png",
    }
    assert sorted(p.name for p in (out / "samples").iterdir()) == [
        "step_000002.png",
        "step_000004.png",
    ]
    ckpt = load_checkpoint(out / "checkpoint.pt")
    assert ckpt.step == 4 and ckpt.generator_ema is not None
    config = json.loads((out / "config.json").read_text())
    assert config["model"] == TINY.to_dict() and config["train"]["steps"] == 4


def test_discriminator_augmentation_shifts_images_and_passes_gradients() -> None:
    from gendeploy.trainer.train import _augment

    images = torch.full((16, 1, 32, 32), -1.0)
    images[:, :, 12:20, 12:20] = 1.0  # a centred square on the -1 background
    images.requires_grad_(True)
    shifted = _augment(images, 0.125, torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    assert not torch.equal(shifted, images)
    assert (shifted == 1).sum(dim=(1, 2, 3)).eq(64).all()  # shifted, never cut: 4px < margin
    shifted.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert _augment(images, 0.0, torch.Generator()) is images


def test_seed_makes_a_run_repeatable(tmp_path: Path) -> None:
    for name in ("a", "b"):
        train(TINY, _tiny_train(2), tmp_path / name, progress=False)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt").generator
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt").generator
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_at_the_step_where_it_stopped(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(TINY, _tiny_train(4), out, progress=False)
    train(TINY, _tiny_train(8), out, resume=True, progress=False)
    assert load_checkpoint(out / "checkpoint.pt").step == 8
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9))


def test_bad_resume_and_existing_runs_are_refused_and_left_untouched(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"no run in .*; start without --resume"):
        train(TINY, _tiny_train(2), out, resume=True, progress=False)
    train(TINY, _tiny_train(2), out, progress=False)
    before = (out / "checkpoint.pt").read_bytes()
    with pytest.raises(UsageError, match="already exists"):
        train(TINY, _tiny_train(2), out, progress=False)
    other = ModelConfig(arch="mlp", image_size=32, num_classes=10, width=8)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="resume with the run's own settings"):
        train(other, _tiny_train(4), out, resume=True, progress=False)
    with pytest.raises(CheckpointError, match="trained with other lr"):
        train(TINY, _tiny_train(4, lr=1e-3), out, resume=True, progress=False)
    with pytest.raises(UsageError, match="already at step 2: pass --steps above it"):
        train(TINY, _tiny_train(2), out, resume=True, progress=False)
    # --force replaces a run only once the new one's dataset has loaded
    with pytest.raises(DataError, match="does not exist"):
        train(TINY, _tiny_train(2, dataset="mnist", data_path="/nonexistent"), out, force=True)
    with pytest.raises(UsageError, match="has 10 classes but the model has --num-classes 3"):
        three = ModelConfig(arch="dcgan", image_size=32, num_classes=3, width=8)  # type: ignore[arg-type]
        train(three, _tiny_train(2), out, force=True, progress=False)
    assert (out / "checkpoint.pt").read_bytes() == before


def test_resume_refuses_a_preset_the_run_is_not(tmp_path: Path) -> None:
    out = tmp_path / "run"
    flags = {"width": 8, "dataset": "fake", "batch_size": 8, "seed": None}
    schedule = {"steps": 2, "sample_every": 2, "checkpoint_every": 2, "eval_at_end": False}
    train(*with_overrides(PRESETS["digits-dcgan"], **flags, **schedule), out, progress=False)
    with pytest.raises(
        UsageError, match=r"is not a --preset digits-cdcgan run: it differs in num_classes \(0 here"
    ):
        resumed_configs(out, flags, {"steps": 4}, "digits-cdcgan")
    with pytest.raises(UsageError, match=r"differs in .*width \(8 here\)"):
        resumed_configs(out, {}, {"steps": 4}, "digits-dcgan")  # the run overrode --width
    model, config, step = resumed_configs(out, flags, {"steps": 4}, "digits-dcgan")  # its own
    assert model.num_classes == 0 and config.steps == 4
    assert step == 2 and resumed_configs(out, {}, {"steps": 4}) == (model, config, step)


def test_force_never_deletes_what_is_not_a_run(tmp_path: Path) -> None:
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "a.jpg").write_bytes(b"keep me")
    for flags in ({"force": True}, {"resume": True}, {}):  # one piece of advice, whatever asked
        with pytest.raises(UsageError, match=r"is not a gendeploy run directory.*another --out"):
            train(TINY, _tiny_train(2), precious, progress=False, **flags)  # type: ignore[arg-type]
    assert (precious / "a.jpg").read_bytes() == b"keep me"
    with pytest.raises(UsageError, match="is a file"):
        train(TINY, _tiny_train(2), precious / "a.jpg", progress=False)


def test_a_run_killed_before_its_first_checkpoint_gets_one_piece_of_advice(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    train(TINY, _tiny_train(2), out, progress=False)
    (out / "checkpoint.pt").unlink()  # what a kill before the first checkpoint leaves
    with pytest.raises(CheckpointError, match=r"stopped before its first checkpoint.*--force"):
        train(TINY, _tiny_train(2), out, resume=True, progress=False)
    with pytest.raises(UsageError, match=r"stopped before its first checkpoint.*--force"):
        train(TINY, _tiny_train(2), out, progress=False)
    train(TINY, _tiny_train(2), out, force=True, progress=False)  # the advice works
    assert load_checkpoint(out / "checkpoint.pt").step == 2


def test_a_checkpoint_from_before_a_train_setting_existed_still_resumes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(TINY, _tiny_train(2), out, progress=False)
    path = out / "checkpoint.pt"
    payload = torch.load(path, weights_only=True)
    del payload["train_config"]["translate"]  # as written before DiffAugment was added
    torch.save(payload, path)
    model, config, step = resumed_configs(out, {"width": 8}, {"steps": 4})
    assert step == 2
    assert config.translate == 0.0 and config.steps == 4 and model == TINY
    train(model, config, out, resume=True, progress=False)
    assert load_checkpoint(path).step == 4


@pytest.mark.slow  # end to end, over 10 s here
def test_resume_keeps_the_runs_own_settings(tmp_path: Path) -> None:
    common = ["train", "--dataset", "fake", "--batch-size", "8", "--width", "8", "--out", "run"]
    common += ["--no-eval", "--no-progress", "--checkpoint-every", "2"]
    assert _cli(*common, "--steps", "2", "--lr", "0.001", cwd=tmp_path).returncode == 0
    again = _cli(*common, "--steps", "4", "--resume", cwd=tmp_path)  # same flags, no --lr
    assert again.returncode == 0, again.stderr
    assert "resuming run from step 2 (checkpoint.pt) to step 4" in again.stdout
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt.step == 4 and ckpt.train_config["lr"] == 0.001
    assert ckpt.optimizer_g is not None and ckpt.optimizer_g["param_groups"][0]["lr"] == 0.001
    changed = _cli(
        *common, "--steps", "6", "--resume", "--width", "16", "--ema", "0.5", cwd=tmp_path
    )
    assert changed.returncode != 0
    assert "drop --width --ema or start a new run" in changed.stderr
    assert len(changed.stderr.strip().splitlines()) == 1
    other_preset = _cli(
        *common, "--steps", "6", "--resume", "--preset", "digits-dcgan", cwd=tmp_path
    )
    assert other_preset.returncode == 2
    assert "is not a --preset digits-dcgan run: it differs in num_classes (10 here" in (
        other_preset.stderr
    )


def test_batchnorm_recalibration_matches_the_generators_own_statistics() -> None:
    torch.manual_seed(0)
    generator = build_generator(TINY)
    bn = next(m for m in generator.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_mean.fill_(5.0)  # stale statistics, as an EMA copy inherits them
    recalibrate_batchnorm(generator, TINY, batches=4, batch_size=32)
    assert not generator.training
    assert bn.running_mean.abs().max() < 1.0


def test_presets_cover_the_seed_mlp_and_both_dcgans() -> None:
    assert {"seed-mlp", "digits-dcgan", "digits-cdcgan"} <= set(PRESETS)
    model, config = with_overrides(PRESETS["digits-cdcgan"], steps=10, width=None)
    assert model.conditional and model.image_size >= 32 and config.steps == 10
    assert PRESETS["seed-mlp"].model.arch.value == "mlp"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GENDEPLOY, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_cli_smoke_run_on_fake_data(tmp_path: Path) -> None:
    result = _cli(
        "train",
        "--dataset",
        "fake",
        "--steps",
        "3",
        "--batch-size",
        "8",
        "--width",
        "8",
        "--out",
        "run",
        "--no-progress",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt").step == 3
    assert (
        "quality report skipped: the quality report scores digits only, this run trained on fake"
        in result.stdout
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope"], "'nope' is not one of 'digits-cdcgan', 'digits-dcgan', 'seed-mlp'"),
        (["--dataset", "nope"], "Invalid value for '--dataset': Value error, 'nope' is not one of"),
        (["--arch", "nope"], "'nope' is not one of 'mlp', 'dcgan'"),
        (["--no-such-flag"], "No such option: --no-such-flag"),
        (["--dataset", "mnist"], "pass --data-path"),
        (["--dataset", "mnist", "--data-path", "missing"], "does not exist"),
        (["--resume"], "no run in run; start without --resume"),  # plain substring match
        (
            ["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "tpu"],
            "--device",
        ),
    ],
)
def test_cli_bad_input_gets_one_line_and_nonzero_exit(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = _cli("train", "--out", "run", "--steps", "1", "--no-progress", *args, cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "Traceback" not in result.stderr


def test_eval_takes_a_run_directory_like_export(tmp_path: Path) -> None:
    from cli_support import cli
    from conftest import TINY_MLP, write_checkpoint

    run = write_checkpoint(TINY_MLP, tmp_path / "runs" / "mlp" / "checkpoint.pt").parent
    code, stdout, stderr = cli("eval", str(run))
    assert code == 0, stderr
    assert "Frechet ratio" in stdout and "classes covered" in stdout


@pytest.mark.parametrize("command", ["eval", "export"])
def test_a_run_config_json_is_named_as_json_not_as_a_checkpoint(
    command: str, tmp_path: Path
) -> None:
    from cli_support import cli

    config = tmp_path / "run" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({"model": {}, "train": {}}))
    code, _, stderr = cli(command, str(config))
    assert code == 1
    assert stderr.strip().splitlines() == [
        f"error: {config} is a JSON file, not a checkpoint; pass the run directory or the "
        "checkpoint.pt in it"
    ]


@pytest.mark.slow  # end to end, over 10 s here
def test_a_killed_run_loses_at_most_one_checkpoint_interval(tmp_path: Path) -> None:
    args = [
        "train",
        "--dataset",
        "fake",
        "--steps",
        "400",
        "--batch-size",
        "8",
        "--width",
        "8",
        "--checkpoint-every",
        "3",
        "--sample-every",
        "1000",
        "--out",
        "run",
        "--no-eval",
        "--no-progress",
    ]
    proc = subprocess.Popen(
        [*GENDEPLOY, *args], cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 120
        metrics = tmp_path / "run" / "metrics.jsonl"
        while time.monotonic() < deadline:
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 10:
                break
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    logged = len(metrics.read_text().splitlines())
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")  # never a truncated file
    assert ckpt.step >= 9 and logged - ckpt.step <= 3 + 1
    target = str(ckpt.step + 3)
    result = _cli(*args[:4], target, *args[5:], "--resume", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt").step == int(target)
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(1, int(target) + 1))  # no step logged twice after the kill


@pytest.mark.slow  # end to end, over 10 s here
def test_two_process_ddp_training_with_torchrun(tmp_path: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    result = subprocess.run(
        [
            str(torchrun),
            "--nproc_per_node",
            "2",
            "--standalone",
            "-m",
            "gendeploy",
            "train",
            "--dataset",
            "fake",
            "--steps",
            "4",
            "--batch-size",
            "8",
            "--width",
            "8",
            "--checkpoint-every",
            "2",
            "--out",
            "run",
            "--no-eval",
            "--no-progress",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt.step == 4
    steps = [
        json.loads(x)["step"] for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [1, 2, 3, 4]  # rank 0 alone writes


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_training_runs_on_the_gpu_and_its_checkpoint_loads_on_cpu(tmp_path: Path) -> None:
    config = _tiny_train(6, ema_decay=0.9, diversity_weight=0.5, translate=0.125, sample_every=3)
    train(TINY, config, tmp_path / "run", progress=False, device="cuda")
    generator, ckpt = load_generator(tmp_path / "run" / "checkpoint.pt")
    assert ckpt.step == 6
    assert all(p.device.type == "cpu" for p in generator.parameters())
    assert (tmp_path / "run" / "samples" / "step_000006.png").is_file()
