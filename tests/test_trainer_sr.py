"""The super-resolution GAN (``--preset digits-sr4x``): its config and checkpoints, the (low, high)
pairs it learns from, a few training steps, the report beside bicubic, and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gendeploy.errors import UsageError
from gendeploy.trainer.checkpoint import Checkpoint, load_generator, save_checkpoint
from gendeploy.trainer.config import PRESETS, Arch, ModelConfig, TrainConfig, with_overrides
from gendeploy.trainer.data import bicubic, digits_split, gaussian_blur, load_dataset, load_pairs
from gendeploy.trainer.models import build_discriminator, build_generator
from gendeploy.trainer.quality import UpscaleReport, evaluate_upscaler, psnr, ssim
from gendeploy.trainer.train import train

TINY_SR = ModelConfig(arch=Arch.srgan, image_size=32, scale=4, width=8, blocks=1)


def _tiny_train(steps: int = 2, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        dataset="digits",
        steps=steps,
        batch_size=8,
        sample_every=2,
        checkpoint_every=2,
        eval_at_end=False,
        input_blur=1.0,
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_the_sr_config_says_scale_and_channels_and_round_trips() -> None:
    model = PRESETS["digits-sr4x"].model
    assert model.image_to_image and model.scale == 4
    assert model.input_shape == (1, 8, 8) and model.image_shape == (1, 32, 32)
    assert ModelConfig.from_dict(model.to_dict()) == model
    rgb_from_grey = replace(TINY_SR, image_channels=3, input_channels=1)
    assert rgb_from_grey.input_shape == (1, 8, 8)
    with pytest.raises(ValueError, match="upscales by 2, 4, 8, not 3"):
        replace(TINY_SR, scale=3)
    with pytest.raises(ValueError, match="power of two and at least 4 x scale = 32"):
        replace(TINY_SR, scale=8, image_size=16)
    with pytest.raises(ValueError, match="scale and input_channels describe image-to-image"):
        ModelConfig(arch=Arch.dcgan, scale=4)


def test_a_checkpoint_from_before_the_sr_fields_still_loads(tmp_path: Path) -> None:
    old = ModelConfig(arch=Arch.dcgan, image_size=32, num_classes=10, width=8)
    path = tmp_path / "c.pt"
    save_checkpoint(Checkpoint(old, 1, build_generator(old).state_dict()), path)
    payload = torch.load(path, weights_only=True)
    for key in ("scale", "input_channels", "blocks"):  # as written before they existed
        del payload["model_config"][key]
    torch.save(payload, path)
    _, ckpt = load_generator(path)
    assert ckpt.model_config == old and not ckpt.model_config.image_to_image


def test_an_sr_checkpoint_describes_itself_and_loads_back(tmp_path: Path) -> None:
    generator = build_generator(TINY_SR)
    path = tmp_path / "c.pt"
    save_checkpoint(Checkpoint(TINY_SR, 3, generator.state_dict(), {"input_blur": 1.0}), path)
    loaded, ckpt = load_generator(path)
    assert ckpt.model_config == TINY_SR and ckpt.train_config["input_blur"] == 1.0
    low = torch.rand(2, 1, 5, 7) * 2 - 1
    assert torch.equal(loaded(low), generator.eval()(low))


def test_the_sr_generator_upscales_any_size_and_clamps_only_in_eval() -> None:
    torch.manual_seed(0)
    generator = build_generator(TINY_SR)
    with torch.no_grad():
        for p in generator.parameters():
            p.add_(torch.randn_like(p))  # outputs well outside [-1, 1]
        for n, h, w in ((1, 8, 8), (3, 5, 11)):
            out = generator(torch.rand(n, 1, h, w) * 2 - 1)
            assert out.shape == (n, 1, 4 * h, 4 * w) and out.abs().max() > 1
        generator.eval()
        x = torch.rand(3, 1, 6, 9) * 2 - 1
        out = generator(x)
        assert out.abs().max() <= 1 and torch.equal(out, generator(x))
    logits, classes = build_discriminator(TINY_SR)(torch.rand(4, 1, 32, 32))
    assert logits.shape == (4,) and classes is None


def test_digits_pairs_are_the_scans_and_the_trainers_own_32x32() -> None:
    pairs = load_pairs("digits", 32, 4, 1)
    scans, labels = digits_split("train")
    assert torch.equal(pairs.low, torch.from_numpy(scans)[:, None] * 2 - 1)  # no resize at all
    assert torch.equal(pairs.high, load_dataset("digits", 32, 1).images)
    assert torch.equal(pairs.labels, torch.from_numpy(labels))
    # Aligned pixel for pixel: each 4x4 block of the target averages back to its scan pixel's
    # neighbourhood (bilinear spreads it by at most one pixel), never a shifted one.
    block_means = F.avg_pool2d(pairs.high, 4)
    assert (block_means - pairs.low).abs().mean() < 0.15
    shifted = torch.roll(pairs.low, 1, dims=3)
    assert (block_means - shifted).abs().mean() > 2 * (block_means - pairs.low).abs().mean()


def test_blur_defocuses_only_the_low_side_and_keeps_the_mean() -> None:
    sharp, blurred = load_pairs("digits", 32, 4, 1), load_pairs("digits", 32, 4, 1, blur=1.0)
    assert torch.equal(sharp.high, blurred.high)
    assert not torch.equal(sharp.low, blurred.low)
    assert blurred.low.diff(dim=3).abs().mean() < 0.6 * sharp.low.diff(dim=3).abs().mean()
    flat = torch.full((1, 1, 8, 8), 0.25)
    assert torch.allclose(gaussian_blur(flat, 1.0), flat)


def test_fake_pairs_are_the_same_images_at_two_sizes() -> None:
    pairs = load_pairs("fake", 32, 4, 3)
    assert pairs.low.shape == (256, 3, 8, 8) and pairs.high.shape == (256, 3, 32, 32)
    assert (F.avg_pool2d(pairs.high, 4) - pairs.low).abs().mean() < 0.2


@pytest.mark.parametrize("loss", ["relativistic", "nonsaturating"])
def test_a_few_sr_training_steps_write_a_complete_run(loss: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train(TINY_SR, _tiny_train(4, gan_loss=loss, ema_decay=0.9), out, progress=False)
    assert {p.name for p in out.iterdir()} >= {"checkpoint.pt", "metrics.jsonl", "loss.png"}
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert {"loss_d", "loss_g", "loss_pixel", "psnr", "d_real", "d_fake"} <= set(metrics[-1])
    from PIL import Image

    with Image.open(out / "samples" / "step_000004.png") as grid:  # 4 rows of 10 digits
        assert grid.size == (10 * 34 + 2, 4 * 34 + 2)
    generator, ckpt = load_generator(out / "checkpoint.pt")
    assert ckpt.generator_ema is not None and ckpt.train_config["gan_loss"] == loss
    assert generator(torch.zeros(1, 1, 8, 8)).shape == (1, 1, 32, 32)


def test_the_relativistic_loss_is_refused_for_noise_generators(tmp_path: Path) -> None:
    dcgan = ModelConfig(arch=Arch.dcgan, image_size=32, width=8)
    with pytest.raises(UsageError, match="--gan-loss relativistic trains image-to-image"):
        train(dcgan, _tiny_train(2, gan_loss="relativistic"), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


class _Bicubic(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return bicubic(x, 4)


class _Oracle(nn.Module):
    """Returns the held-out targets themselves, in order."""

    def __init__(self, high: torch.Tensor) -> None:
        super().__init__()
        self.high, self.served = high, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.served += len(x)
        return self.high[self.served - len(x) : self.served]


def test_the_report_puts_the_model_beside_bicubic_and_the_targets() -> None:
    as_bicubic = evaluate_upscaler(_Bicubic(), TINY_SR, blur=1.0)
    assert isinstance(as_bicubic, UpscaleReport) and as_bicubic.samples == 355
    assert as_bicubic.psnr == as_bicubic.psnr_bicubic and as_bicubic.ssim == as_bicubic.ssim_bicubic
    assert as_bicubic.label_accuracy == as_bicubic.label_accuracy_bicubic
    assert as_bicubic.label_accuracy < as_bicubic.classifier_accuracy  # the blur costs readings
    high = load_pairs("digits", 32, 4, 1, split="test").high
    oracle = evaluate_upscaler(_Oracle(high), TINY_SR, blur=1.0)
    assert oracle.psnr == 100.0 and oracle.ssim == pytest.approx(1.0)
    assert oracle.label_accuracy == oracle.classifier_accuracy >= 0.97
    assert set(oracle.to_dict()) == {
        "classifier_accuracy", "samples", "scale", "input_blur", "psnr", "psnr_bicubic", "ssim",
        "ssim_bicubic", "label_accuracy", "label_accuracy_bicubic",
    }  # fmt: skip


def test_psnr_and_ssim_agree_with_their_definitions() -> None:
    a = torch.zeros(1, 1, 16, 16)
    b = torch.full((1, 1, 16, 16), 0.2)  # [0, 1] difference 0.1: 20 dB
    assert float(psnr(b, a)) == pytest.approx(20.0, abs=1e-4)
    assert float(ssim(a, a)) == pytest.approx(1.0) and float(ssim(a + 0.5, a)) < 1.0


@pytest.mark.slow  # end to end, over 10 s here
def test_cli_trains_evaluates_and_exports_an_upscaler(tmp_path: Path) -> None:
    from cli_support import cli

    args = ["train", "--preset", "digits-sr4x", "--steps", "2", "--width", "8", "--out"]
    code, stdout, stderr = cli(*args, str(tmp_path / "run"), "--no-progress")
    assert code == 0, stderr
    assert "x4 upscaling, 355 held-out digits" in stdout and "read as the right digit" in stdout
    quality = json.loads((tmp_path / "run" / "quality.json").read_text())
    assert quality["input_blur"] == 1.0 and quality["psnr_bicubic"] > 0
    code, stdout, stderr = cli("eval", str(tmp_path / "run"))
    assert code == 0 and "PSNR to the 32x32 target" in stdout, stderr
    code, stdout, stderr = cli(
        "export", str(tmp_path / "run"), "--out", str(tmp_path / "export"), "--tile", "32"
    )
    assert code == 0, stderr
    manifest = json.loads((tmp_path / "export" / "manifest.json").read_text())
    image = manifest["image"]
    assert (image["scale"], image["in_channels"], image["receptive_field"]) == (4, 1, 11)
    assert image["tile"] == {**image["tile"], "size": 32, "margin": 11, "tiled": True}
    assert image["test_set"] == "digits" and "receptive field 11 px" in stdout


def test_sr_flags_override_the_preset() -> None:
    model, config = with_overrides(
        PRESETS["digits-sr4x"], scale=2, gan_loss="nonsaturating", input_blur=0.0
    )
    assert model.scale == 2 and model.input_shape == (1, 16, 16)
    assert config.gan_loss.value == "nonsaturating" and config.input_blur == 0.0
