"""Image-to-image models served by a real tritonserver (issue 19): the python model takes UINT8
HWC images or PNG / JPEG bytes of any size up to its megapixel limit, tiles them and returns
what the tiled eager model draws; bad images are refused with one line while the server keeps
serving; `gendeploy upscale` writes the result over HTTP and gRPC."""

from __future__ import annotations

import io
import os
import resource
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from image_models import PROOF_MODELS, fitted_weights
from PIL import Image
from serve_support import require_tritonserver

from gendeploy.export.api import export
from gendeploy.export.options import ExportOptions, ModelSpec
from gendeploy.export.source import load_eager
from gendeploy.manifest import Manifest, load_manifest
from gendeploy.runtime.triton import InferenceError, TritonRunner
from gendeploy.serve.repo import RepoOptions, parse_config, write_repo
from gendeploy.serve.server import TritonServer, group_members
from gendeploy.testimages import synthetic_image
from gendeploy.tiling import upscale

pytestmark = pytest.mark.triton

MAX_MEGAPIXELS = 0.05  # small, so that an image over it is quick to send
REFUSED = {"http": "400", "grpc": "StatusCode.INVALID_ARGUMENT"}


@dataclass
class Served:
    server: TritonServer
    manifests: dict[str, Manifest]  # by model name
    repo: Path
    exports: dict[str, Path]

    def url(self, protocol: str) -> str:
        return self.server.http_url if protocol == "http" else self.server.grpc_url


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_tritonserver()
    root = tmp_path_factory.mktemp("served_images")
    manifests, exports, repo = {}, {}, root / "repo"
    # an x4 upscaler tiled in 16-pixel cores (FP32 and INT8), a U-Net (sides multiples of 32:
    # padded and cropped) run whole, a CycleGAN ResNet (instance norm: never tiled); RRDBNet is
    # served in a slow test of its own
    for name, tile, int8 in (("srvgg", 16, True), ("unet", 64, False), ("cyclegan", 32, False)):
        proof = PROOF_MODELS[name]
        weights = fitted_weights(proof, root / f"{name}.safetensors")
        spec = ModelSpec(model=proof.factory, weights=weights)
        out = root / "exports" / name
        export(spec, ExportOptions(int8=int8, max_batch=4, tile=tile), name=name, out=out)
        manifests[name], exports[name] = load_manifest(out), out
        write_repo(out, repo, RepoOptions(queue_delay_us=0, max_megapixels=MAX_MEGAPIXELS))
    server = TritonServer(repo, log_path=root / "tritonserver.log")
    server.start()
    pgid = server.process.pid if server.process else 0
    try:
        yield Served(server, manifests, repo, exports)
    finally:
        server.stop()
    assert group_members(pgid) == [], "a python-backend stub outlived the server"


def tiled_eager(manifest: Manifest, images: np.ndarray) -> np.ndarray:
    """What the served model must return: each image tiled as the manifest says, run eagerly."""
    module = load_eager(manifest)
    assert manifest.image is not None
    geometry = manifest.image.geometry()

    def model(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return module(torch.from_numpy(x)).numpy()

    return np.stack([upscale(image, model, geometry) for image in images])


def close(served: np.ndarray, want: np.ndarray) -> None:
    """ONNX Runtime and eager PyTorch round a few pixels to neighbouring levels."""
    assert served.shape == want.shape and served.dtype == np.uint8
    diff = np.abs(served.astype(np.int16) - want)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.01


def png(image: np.ndarray, fmt: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(buffer, format=fmt)
    return buffer.getvalue()


def images(n: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.stack([synthetic_image(h, w, 3, seed + i) for i in range(n)])


def test_the_repository_declares_images_of_any_size_and_dynamic_siblings(served: Served) -> None:
    python = parse_config((served.repo / "srvgg" / "config.pbtxt").read_text())
    assert [(i.name, list(i.dims)) for i in python.input] == [
        ("image", [-1, -1, -1]),
        ("image_bytes", [1]),
    ]
    assert python.parameters["max_megapixels"].string_value == f"{MAX_MEGAPIXELS:g}"
    # one instance holds the largest request's tiles and output; a second would hold them twice
    assert python.instance_group[0].count == 1
    assert (served.repo / "srvgg" / "1" / "tiling.py").is_file()
    onnx = parse_config((served.repo / "srvgg_onnx" / "config.pbtxt").read_text())
    assert onnx.platform == "onnxruntime_onnx" and list(onnx.input[0].dims) == [3, -1, -1]
    assert list(onnx.output[0].dims) == [3, -1, -1]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize(("model", "batch", "size"), [
    ("srvgg", 1, (37, 53)),  # 3 x 4 tiles of 16, the last ones partial
    ("srvgg", 3, (20, 9)),
    ("srvgg_int8", 2, (24, 31)),
    ("unet", 1, (40, 70)),  # padded to 64 x 96, cropped back
    ("unet", 2, (32, 33)),
    ("cyclegan", 2, (38, 50)),  # padded to multiples of 4, cropped back
])  # fmt: skip
def test_served_images_equal_the_tiled_eager_model_at_any_size_and_batch(
    served: Served, protocol: str, model: str, batch: int, size: tuple[int, int]
) -> None:
    sent = images(batch, *size, seed=batch)
    with TritonRunner(served.url(protocol), model, protocol) as runner:
        got = runner.run({"image": sent})
    manifest = served.manifests[model.removesuffix("_int8")]
    scale = manifest.image.scale if manifest.image else 0
    assert got.shape == (batch, size[0] * scale, size[1] * scale, 3)
    want = tiled_eager(manifest, sent)
    if model.endswith("_int8"):  # INT8 draws close to FP32, not equal
        assert np.abs(got.astype(np.int16) - want).mean() < 4
    else:
        close(got, want)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_png_and_jpeg_bytes_are_decoded_by_the_server(served: Served, protocol: str) -> None:
    image = synthetic_image(21, 34, 3, 5)
    jpeg = png(image, "JPEG")
    sent = np.array([[png(image)], [png(image)]], dtype=np.object_)
    with TritonRunner(served.url(protocol), "srvgg", protocol) as runner:
        from_png = runner.run({"image_bytes": sent})
        from_jpeg = runner.run({"image_bytes": np.array([[jpeg]], dtype=np.object_)})
    want = tiled_eager(served.manifests["srvgg"], image[None])
    close(from_png[:1], want)
    close(from_png[1:], want)
    decoded = np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))
    close(from_jpeg, tiled_eager(served.manifests["srvgg"], decoded[None]))


def test_an_image_larger_than_an_untiled_model_runs_whole_is_refused_with_one_line(
    served: Served,
) -> None:
    image = served.manifests["cyclegan"].image
    assert image is not None and not image.tile.tiled
    side = image.tile.size + 2 * image.tile.margin + 4
    with TritonRunner(served.url("http"), "cyclegan") as runner:
        with pytest.raises(InferenceError) as refused:
            runner.run({"image": images(1, side, 8)})
        assert refused.value.status == "400" and "this model is not tiled" in str(refused.value)
        good = images(1, 12, 16)
        close(runner.run({"image": good}), tiled_eager(served.manifests["cyclegan"], good))


def _corrupt_png() -> bytes:
    whole = png(synthetic_image(16, 16, 3, 0))
    return whole[:40] + bytes(len(whole) - 40)  # the header, then zeros


BAD_IMAGES = {
    "over the limit": ({"image": np.zeros((1, 300, 300, 3), np.uint8)}, "limit of 0.05 megapixels"),
    "png over the limit": (
        {"image_bytes": np.array([[png(np.zeros((300, 300, 3), np.uint8))]], np.object_)},
        "limit of 0.05 megapixels",
    ),
    "four channels": ({"image": np.zeros((1, 8, 8, 4), np.uint8)}, "has 4 channels"),
    "one channel": ({"image": np.zeros((1, 8, 8, 1), np.uint8)}, "has 1 channels"),
    "corrupt png": (
        {"image_bytes": np.array([[_corrupt_png()]], np.object_)},
        "not a PNG or JPEG file",
    ),
    "not an image": ({"image_bytes": np.array([[b"hello"]], np.object_)}, "not a PNG or JPEG"),
    "zero-sized image": ({"image": np.zeros((1, 0, 5, 3), np.uint8)}, "the image is empty"),
    "both inputs": (
        {"image": np.zeros((1, 8, 8, 3), np.uint8), "image_bytes": np.array([[b"x"]], np.object_)},
        "send exactly one of",
    ),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", list(BAD_IMAGES))
def test_bad_images_are_refused_with_one_line_and_the_server_keeps_serving(
    served: Served, protocol: str, case: str
) -> None:
    feeds, says = BAD_IMAGES[case]
    url = served.url(protocol)
    with TritonRunner(url, "srvgg", protocol) as runner, pytest.raises(InferenceError) as refused:
        runner.run(feeds)
    assert refused.value.status == REFUSED[protocol], str(refused.value)
    assert says in str(refused.value) and "\n" not in str(refused.value)
    good = images(1, 13, 17, seed=3)
    with TritonRunner(url, "srvgg", protocol) as runner:
        close(runner.run({"image": good}), tiled_eager(served.manifests["srvgg"], good))


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gendeploy", *args], capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(("protocol", "send"), [("http", "bytes"), ("grpc", "pixels")])
def test_the_upscale_command_writes_the_served_image(
    served: Served, tmp_path: Path, protocol: str, send: str
) -> None:
    image = synthetic_image(23, 30, 3, 9)
    source, out = tmp_path / "photo.png", tmp_path / "out.png"
    source.write_bytes(png(image))
    url = served.url(protocol)
    args = ["upscale", str(source), "-o", str(out), "--model", "srvgg", "--url", url]
    done = cli(*args, "--protocol", protocol, "--send", send)
    assert done.returncode == 0, done.stderr
    assert "out.png: 120 x 92" in done.stdout
    close(np.asarray(Image.open(out))[None], tiled_eager(served.manifests["srvgg"], image[None]))


def test_the_upscale_command_refuses_a_bad_image_with_one_line_and_writes_nothing(
    served: Served, tmp_path: Path
) -> None:
    source, out = tmp_path / "broken.png", tmp_path / "out.png"
    source.write_bytes(_corrupt_png())
    url = served.url("http")
    done = cli("upscale", str(source), "-o", str(out), "--model", "srvgg", "--url", url)
    assert done.returncode != 0 and len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "not a PNG or JPEG file" in done.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == [source]


def test_the_upscale_command_runs_an_export_here_without_a_server(
    served: Served, tmp_path: Path
) -> None:
    image = synthetic_image(41, 19, 3, 4)  # 3 x 2 tiles of 16
    source, out = tmp_path / "photo.png", tmp_path / "out.webp"
    source.write_bytes(png(image))
    done = cli("upscale", str(source), "-o", str(out), "--export", str(served.exports["srvgg"]))
    assert done.returncode == 0, done.stderr
    assert "out.webp: 76 x 164 from" in done.stdout and "(here)" in done.stdout
    with Image.open(out) as written:  # WebP is lossless only when asked: compare loosely
        assert written.size == (76, 164)
    png_out = tmp_path / "out.png"
    done = cli("upscale", str(source), "-o", str(png_out), "--export", str(served.exports["srvgg"]))
    assert done.returncode == 0, done.stderr
    want = tiled_eager(served.manifests["srvgg"], image[None])
    close(np.asarray(Image.open(png_out))[None], want)
    bad = cli("upscale", str(tmp_path / "nope.png"), "-o", str(tmp_path / "x.png"),
              "--export", str(served.exports["srvgg"]))  # fmt: skip
    assert bad.returncode != 0 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow  # RRDBNet's dense blocks make its export slow: about two minutes here
def test_a_served_rrdbnet_equals_its_tiled_eager_model(tmp_path: Path) -> None:
    require_tritonserver()
    proof = PROOF_MODELS["rrdbnet"]
    spec = ModelSpec(model=proof.factory, weights=fitted_weights(proof, tmp_path / "w.safetensors"))
    export(spec, ExportOptions(max_batch=4, tile=16), name="rrdbnet", out=tmp_path / "e")
    write_repo(tmp_path / "e", tmp_path / "repo", RepoOptions(queue_delay_us=0))
    server = TritonServer(tmp_path / "repo", log_path=tmp_path / "tritonserver.log")
    server.start()
    try:
        for protocol, batch, size in (("http", 2, (19, 23)), ("grpc", 1, (33, 12))):
            sent = images(batch, *size, seed=batch)
            url = server.http_url if protocol == "http" else server.grpc_url
            with TritonRunner(url, "rrdbnet", protocol) as runner:
                close(runner.run({"image": sent}), tiled_eager(load_manifest(tmp_path / "e"), sent))
    finally:
        server.stop()


def _peak_rss_mb(pids: list[int]) -> float:
    """The sum of each process's peak resident memory (VmHWM), MB."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            total += next(int(line.split()[1]) for line in f if line.startswith("VmHWM"))
    return total / 1024


@pytest.mark.slow  # a 2048 x 2048 photo to 8192 x 8192: about a minute here
def test_a_2048_pixel_photo_is_upscaled_with_bounded_memory(tmp_path: Path) -> None:
    require_tritonserver()
    proof = PROOF_MODELS["srvgg"]
    weights = fitted_weights(proof, tmp_path / "w.safetensors")
    spec = ModelSpec(model=proof.factory, weights=weights)
    export(spec, ExportOptions(max_batch=4, tile=128), name="srvgg", out=tmp_path / "e")
    write_repo(tmp_path / "e", tmp_path / "repo", RepoOptions(queue_delay_us=0))
    photo = synthetic_image(2048, 2048, 3, 1)
    server = TritonServer(tmp_path / "repo", log_path=tmp_path / "tritonserver.log")
    server.start()
    try:
        pgid = server.process.pid if server.process else 0
        before = _peak_rss_mb(group_members(pgid))
        with TritonRunner(server.http_url, "srvgg", timeout_s=900) as runner:
            got = runner.run({"image_bytes": np.array([[png(photo)]], np.object_)})
        after = _peak_rss_mb(group_members(pgid))
    finally:
        server.stop()
    assert got.shape == (1, 8192, 8192, 3)
    output_mb = got.nbytes / 2**20  # 192 MB of uint8; as float32 it would be 768 MB
    client_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"\n2048x2048 -> 8192x8192: server peak RSS {after:.0f} MB (before the request "
        f"{before:.0f} MB), output {output_mb:.0f} MB, client peak RSS {client_mb:.0f} MB, "
        f"pid {os.getpid()}"
    )
    # the server holds the request, a few copies of the uint8 output on its way out (stub,
    # shared memory, response) and one batch of windows: never the float image
    assert after - before < 6 * output_mb
    # the tiles are right: a corner checked against the eager model (its margin covers the
    # receptive field, so a crop with room around it draws the same pixels)
    corner = tiled_eager(load_manifest(tmp_path / "e"), photo[None, :300, :300])[0, :1000, :1000]
    close(got[:, :1000, :1000], corner[None])


def test_the_repo_command_sets_the_megapixel_limit_and_generate_points_to_upscale(
    served: Served, tmp_path: Path
) -> None:
    done = cli("repo", str(served.exports["srvgg"]), "--repo", str(tmp_path / "repo"),
               "--max-megapixels", "1.5")  # fmt: skip
    assert done.returncode == 0, done.stderr
    config = parse_config((tmp_path / "repo" / "srvgg" / "config.pbtxt").read_text())
    assert config.parameters["max_megapixels"].string_value == "1.5"
    refused = cli("generate", "--model", "srvgg", "--url", served.url("http"), "-o",
                  str(tmp_path / "grid.png"))  # fmt: skip
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
    assert "is image-to-image: `gendeploy upscale" in refused.stderr
    assert not (tmp_path / "grid.png").exists()
