"""`gendeploy export` of trainer checkpoints: artifacts, manifest, gate figures, safe publishing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import TINY_CONDITIONAL_DCGAN, TINY_MLP, MakeCheckpoint

from gendeploy.errors import ExportError, UsageError
from gendeploy.export.api import export
from gendeploy.export.gate import render
from gendeploy.export.options import ExportOptions, ModelSpec
from gendeploy.export.publish import STAGING_PREFIX, publish, set_aside, staging_dir
from gendeploy.export.source import load_eager
from gendeploy.manifest import load_manifest, sha256_file
from gendeploy.runtime.eager import EagerRunner
from gendeploy.runtime.onnxrt import OnnxRuntimeRunner
from gendeploy.runtime.tensorrt import tensorrt_availability


def _eager(checkpoint_dir: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    manifest = load_manifest(checkpoint_dir)
    return EagerRunner(load_eager(manifest)).run(feeds)


def test_export_of_a_conditional_checkpoint_publishes_gated_fp32_uint8_fp16(
    make_checkpoint: MakeCheckpoint, tmp_path: Path
) -> None:
    ckpt = make_checkpoint(TINY_CONDITIONAL_DCGAN, run="digits")
    out = tmp_path / "exports" / "digits"
    manifest = export(
        ModelSpec(checkpoint=ckpt), ExportOptions(fp16=True, output="uint8", max_batch=16), out=out
    )

    assert manifest.name == "digits"  # from the run directory
    names = [a.name for a in manifest.artifacts]
    assert names[:4] == ["fp32", "uint8", "fp16", "fp16_uint8"]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["manifest.json", *(f"{n}.onnx" for n in names)]
    )
    on_disk = load_manifest(out)
    assert on_disk.to_json() == manifest.to_json()
    assert on_disk.source.sha256 == sha256_file(ckpt)
    assert on_disk.batch.max == 16 and on_disk.opset >= 17
    assert {"torch", "onnx", "onnxruntime"} <= set(on_disk.versions)
    for artifact in on_disk.artifacts:
        assert artifact.sha256 == sha256_file(out / artifact.path)
        assert artifact.validation["passed"] is True
        assert artifact.validation["samples"] >= 8
        onnx.checker.check_model(str(out / artifact.path), full_check=True)
    assert on_disk.artifact("fp32").validation["max_abs_diff"] < 1e-4
    assert on_disk.artifact("fp16").validation["psnr_db"] >= 40
    assert on_disk.artifact("uint8").validation["max_level_diff"] <= 1
    for head in ("uint8", "fp16_uint8"):  # each head within 1 level of its float graph's images
        assert on_disk.artifact(head).validation["head_level_diff"] <= 1
    for reduced in ("fp16", "fp16_uint8"):  # FP16 also passed the quality gate on what it draws
        quality = on_disk.artifact(reduced).validation["quality"]
        assert quality["passed"] and quality["seeds"] >= 1000
        assert quality["frechet_ratio"] <= 1.10 and quality["psnr"]["p1_db"] >= 40
    assert "quality" not in on_disk.artifact("fp32").validation  # FP32 is the reference
    if not tensorrt_availability().ok:  # said plainly, not silently dropped
        skipped = {s["name"]: s["reason"] for s in on_disk.skipped}
        assert skipped.keys() == {"trt_fp16", "trt_fp16_uint8"}
        assert tensorrt_availability().reason in skipped["trt_fp16"]


def test_exported_onnx_has_a_dynamic_batch_and_matches_eager_at_any_batch(
    make_checkpoint: MakeCheckpoint, tmp_path: Path
) -> None:
    out = tmp_path / "e"
    export(ModelSpec(checkpoint=make_checkpoint()), ExportOptions(output="uint8"), out=out)
    rng = np.random.default_rng(7)
    for batch in (1, 5, 13):
        feeds = {
            "z": rng.standard_normal((batch, 16)).astype(np.float32),
            "labels": rng.integers(0, 4, batch).astype(np.int64),
        }
        expected = _eager(out, feeds)
        images = OnnxRuntimeRunner(out / "fp32.onnx").run(feeds)
        assert images.shape == (batch, 1, 32, 32)
        np.testing.assert_allclose(images, expected, atol=1e-4)
        rendered = OnnxRuntimeRunner(out / "uint8.onnx").run(feeds)
        assert rendered.dtype == np.uint8 and rendered.shape == (batch, 32, 32, 1)
        assert np.abs(rendered.astype(int) - render(expected)).max() <= 1


def test_single_self_contained_onnx_without_external_data(
    make_checkpoint: MakeCheckpoint, tmp_path: Path
) -> None:
    out = tmp_path / "e"
    export(ModelSpec(checkpoint=make_checkpoint(TINY_MLP)), out=out)
    assert sorted(p.name for p in out.iterdir()) == ["fp32.onnx", "manifest.json"]
    model = onnx.load(str(out / "fp32.onnx"), load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["z"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch


def test_reexport_is_a_noop_unless_force(make_checkpoint: MakeCheckpoint, tmp_path: Path) -> None:
    ckpt = make_checkpoint(TINY_MLP)
    out = tmp_path / "e"
    first = export(ModelSpec(checkpoint=ckpt), out=out)
    stamp = os.stat(out / "fp32.onnx").st_mtime_ns
    messages: list[str] = []
    again = export(ModelSpec(checkpoint=ckpt.parent), out=out, log=messages.append)  # run dir
    assert again.created == first.created
    assert os.stat(out / "fp32.onnx").st_mtime_ns == stamp
    assert any("up to date" in m for m in messages)

    export(ModelSpec(checkpoint=ckpt), out=out, force=True)
    assert os.stat(out / "fp32.onnx").st_mtime_ns != stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)]


def test_other_options_into_an_existing_export_need_force(
    make_checkpoint: MakeCheckpoint, tmp_path: Path
) -> None:
    ckpt = make_checkpoint(TINY_MLP)
    out = tmp_path / "e"
    export(ModelSpec(checkpoint=ckpt), out=out)
    with pytest.raises(UsageError, match="--force"):
        export(ModelSpec(checkpoint=ckpt), ExportOptions(max_batch=4), out=out)
    assert load_manifest(out).batch.max == 64


def test_interrupted_export_leaves_nothing_behind_and_keeps_the_earlier_export(
    make_checkpoint: MakeCheckpoint, tmp_path: Path
) -> None:
    ckpt = make_checkpoint(TINY_MLP)
    out = tmp_path / "exports" / "e"

    def interrupt_after_first_gate(message: str) -> None:
        if message.startswith("gate passed fp32"):  # fp32.onnx is written by now
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export(ModelSpec(checkpoint=ckpt), out=out, log=interrupt_after_first_gate)
    assert list(out.parent.iterdir()) == []

    export(ModelSpec(checkpoint=ckpt), out=out)
    before = {p.name: sha256_file(p) for p in out.iterdir()}
    with pytest.raises(KeyboardInterrupt):
        export(
            ModelSpec(checkpoint=ckpt),
            ExportOptions(fp16=True),
            out=out,
            force=True,
            log=interrupt_after_first_gate,
        )
    assert {p.name: sha256_file(p) for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == ["e"]


def test_a_sigkilled_export_leaves_a_staging_dir_that_the_next_export_removes(
    make_checkpoint: MakeCheckpoint, tmp_path: Path
) -> None:
    out = tmp_path / "e"
    # A real process stopped by SIGKILL inside its staging directory: no cleanup code runs.
    script = (
        "import sys, time; from pathlib import Path; "
        "from gendeploy.export.publish import staging_dir\n"
        "with staging_dir(Path(sys.argv[1])) as d:\n"
        "    (d / 'fp32.onnx').write_bytes(b'half'); print(d, flush=True); time.sleep(60)"
    )
    child = subprocess.Popen([sys.executable, "-c", script, str(out)], stdout=subprocess.PIPE)
    assert child.stdout is not None
    orphan = Path(child.stdout.readline().decode().strip())
    child.kill()
    child.wait()
    assert orphan.is_dir()

    with staging_dir(out) as running:  # an export still at work: its lock is held
        (running / "fp32.onnx").write_bytes(b"in progress")
        export(ModelSpec(checkpoint=make_checkpoint(TINY_MLP)), out=out, force=True)
        assert running.is_dir()
        left = {p.name for p in tmp_path.iterdir() if p.name.startswith(STAGING_PREFIX)}
        assert left == {running.name, running.name + ".lock"}
    assert not orphan.exists()


@pytest.mark.parametrize("killed_after", ["set aside", "new one in place"])
def test_an_export_killed_between_its_renames_is_repaired_by_the_next_one(
    make_checkpoint: MakeCheckpoint, tmp_path: Path, killed_after: str
) -> None:
    """A --force export SIGKILLed after setting the earlier export aside leaves no export at
    --out; the next export puts it back (or, when the new one got in, drops the old copy)."""
    checkpoint, out = make_checkpoint(TINY_MLP), tmp_path / "e"
    first = export(ModelSpec(checkpoint=checkpoint), out=out)
    aside = set_aside(out)  # the state the kill leaves: the first of publish()'s two renames
    if killed_after == "new one in place":
        shutil.copytree(aside / "previous", out)
    assert (aside / "previous" / "manifest.json").is_file()
    said: list[str] = []
    again = export(ModelSpec(checkpoint=checkpoint), out=out, log=said.append)
    assert again.fingerprint == first.fingerprint and (out / "manifest.json").is_file()
    assert said[0].startswith("restored" if killed_after == "set aside" else "removed")
    assert any(line.startswith("up to date") for line in said)
    assert not aside.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_concurrent_publishes_to_one_place_take_turns_and_leave_nothing_behind(
    tmp_path: Path,
) -> None:
    """--force exports racing to one --out: each publish waits for the other (a lock)."""
    out = tmp_path / "m"
    errors: list[BaseException] = []

    def one(i: int) -> None:
        staged = tmp_path / f"staged-{i}"
        staged.mkdir()
        (staged / "manifest.json").write_text(str(i))
        try:
            publish(staged, out, force=True)
        except BaseException as e:
            errors.append(e)

    for _round in range(10):
        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert int((out / "manifest.json").read_text()) in range(8)
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_load_eager_rebuilds_the_model_the_export_was_made_from(
    make_checkpoint: MakeCheckpoint, tmp_path: Path
) -> None:
    ckpt = make_checkpoint(TINY_MLP)
    out = tmp_path / "e"
    export(ModelSpec(checkpoint=ckpt), out=out)
    module = load_eager(load_manifest(out))
    z = torch.randn(3, 8)
    with torch.no_grad():
        images = module(z).numpy()
    np.testing.assert_allclose(
        OnnxRuntimeRunner(out / "fp32.onnx").run({"z": z.numpy()}), images, atol=1e-5
    )
    json.loads((out / "manifest.json").read_text())  # plain JSON, readable without gendeploy


def test_published_directory_has_ordinary_permissions(
    make_checkpoint: MakeCheckpoint, tmp_path: Path
) -> None:
    out = tmp_path / "e"
    export(ModelSpec(checkpoint=make_checkpoint(TINY_MLP)), out=out)
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask


def _failing_replace(monkeypatch: pytest.MonkeyPatch, fail_calls: set[int]) -> None:
    """Make the n-th os.replace of publish() fail (a full or vanished filesystem)."""
    import gendeploy.export.publish as publish_module

    calls = {"n": 0}
    real = os.replace

    def replace(src: object, dst: object) -> None:
        calls["n"] += 1
        if calls["n"] in fail_calls:
            raise OSError(f"injected failure {calls['n']}")
        real(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr(publish_module.os, "replace", replace)


def _old_and_new(tmp_path: Path) -> tuple[Path, Path]:
    out, staged = tmp_path / "exports" / "m", tmp_path / "exports" / "staged"
    out.mkdir(parents=True)
    (out / "manifest.json").write_text("old")
    staged.mkdir()
    (staged / "manifest.json").write_text("new")
    return out, staged


def test_publish_puts_the_earlier_export_back_when_the_new_one_cannot_move_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, staged = _old_and_new(tmp_path)
    _failing_replace(monkeypatch, {2})  # 1: set the old one aside, 2: move the new one in
    with pytest.raises(OSError, match="injected failure 2"):
        publish(staged, out, force=True)
    assert (out / "manifest.json").read_text() == "old"
    assert sorted(p.name for p in out.parent.iterdir()) == ["m", "staged"]


def test_publish_keeps_the_earlier_export_and_names_it_when_it_cannot_be_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out, staged = _old_and_new(tmp_path)
    _failing_replace(monkeypatch, {2, 3})
    with pytest.raises(ExportError, match="it is kept at ") as failed:
        publish(staged, out, force=True)
    kept = Path(str(failed.value).rsplit("it is kept at ", 1)[1])
    assert (kept / "manifest.json").read_text() == "old"


def test_what_appears_at_out_while_an_export_runs_is_checked_again_and_kept(
    tmp_path: Path,
) -> None:
    """The checks made before the build are made again under the publish lock."""
    out, staged = _old_and_new(tmp_path)  # an export "old" appeared at out during the build
    with pytest.raises(UsageError, match="appeared while this export ran: pass --force"):
        publish(staged, out)
    assert (out / "manifest.json").read_text() == "old"
    (out / "manifest.json").unlink()
    (out / "notes.txt").write_text("the user's")  # not an export: not even --force replaces it
    with pytest.raises(UsageError, match="is not a gendeploy export"):
        publish(staged, out, force=True)
    assert (out / "notes.txt").read_text() == "the user's" and staged.is_dir()
