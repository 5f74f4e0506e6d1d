"""Against a real tritonserver (nvidia-pytriton's, on loopback): one server for the module.

Served images equal eager PyTorch and in-process ONNX Runtime over HTTP and gRPC; dynamic batching
batches; bad requests get 4xx / INVALID_ARGUMENT while the server keeps serving; `gendeploy serve`
and `gendeploy generate` work end to end and leave no process behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from serve_support import (
    FREE_PORTS,
    TINY_CONDITIONAL,
    TINY_UNCONDITIONAL,
    build_export,
    eager_images,
    make_checkpoint,
    require_tritonserver,
)
from typer.testing import CliRunner

from gendeploy.cli import app
from gendeploy.images import to_uint8_nhwc
from gendeploy.runtime.triton import InferenceError, TritonRunner
from gendeploy.seeds import draw_latents
from gendeploy.serve.client import generate, inference_statistics
from gendeploy.serve.repo import RepoOptions, write_repo
from gendeploy.serve.server import TritonServer, group_members

pytestmark = pytest.mark.triton

FP32_ATOL = 1e-4  # the export gate's FP32 tolerance
MAX_BATCH = 8


@dataclass
class Served:
    server: TritonServer
    checkpoints: dict[str, Path]
    exports: dict[str, Path]
    repo: Path

    def url(self, protocol: str) -> str:
        return self.server.http_url if protocol == "http" else self.server.grpc_url


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    require_tritonserver()
    root = tmp_path_factory.mktemp("triton")
    checkpoints = {
        "tinyc": make_checkpoint(TINY_CONDITIONAL, root / "cond.pt"),
        "tinyu": make_checkpoint(TINY_UNCONDITIONAL, root / "uncond.pt"),
    }
    exports = {
        name: build_export(ckpt, root / "exports" / name, name, max_batch=MAX_BATCH)
        for name, ckpt in checkpoints.items()
    }
    repo = root / "repo"
    for export_dir in exports.values():
        write_repo(export_dir, repo, RepoOptions(queue_delay_us=10_000))
    server = TritonServer(repo, log_path=root / "tritonserver.log", watch=True)
    server.start()
    pgid = server.process.pid if server.process else 0
    try:
        yield Served(server, checkpoints, exports, repo)
    finally:
        server.stop()
    assert group_members(pgid) == [], "a python-backend stub outlived the server"


def ort_images(export_dir: Path, artifact: str, z: np.ndarray, labels: np.ndarray | None):
    import onnxruntime as ort

    session = ort.InferenceSession(str(export_dir / f"{artifact}.onnx"))
    feeds = {"z": z} if labels is None else {"z": z, "labels": labels}
    return session.run(None, feeds)[0]


def request(name: str, source: str, seeds: list[int]) -> tuple[dict, np.ndarray, np.ndarray | None]:
    """Feeds for ``seeds`` (as z or as seeds), with the z and labels they stand for."""
    latent = TINY_CONDITIONAL.latent_dim if name == "tinyc" else TINY_UNCONDITIONAL.latent_dim
    z = draw_latents(seeds, latent)
    feeds: dict[str, np.ndarray] = (
        {"seed": np.array(seeds, np.int64)} if source == "seed" else {"z": z}
    )
    labels = None
    if name == "tinyc":
        labels = np.array([s % TINY_CONDITIONAL.num_classes for s in seeds], np.int64)
        feeds["labels"] = labels
    return feeds, z, labels


def test_the_pytriton_server_loads_the_python_models_and_skips_ngc_only_ones(
    served: Served,
) -> None:
    assert sorted(served.server.loaded) == ["tinyc", "tinyc_uint8", "tinyu", "tinyu_uint8"]
    assert set(served.server.skipped) == {"tinyc_onnx", "tinyu_onnx"}
    ready = {m["name"] for m in served.server.models() if m.get("state") == "READY"}
    assert ready == set(served.server.loaded)


def test_every_port_the_server_listens_on_is_bound_to_loopback(served: Served) -> None:
    import psutil

    assert served.server.process is not None
    process = psutil.Process(served.server.process.pid)
    # psutil >= 6 names it net_connections; kserve (the deploy extra) pins psutil < 6
    connections = getattr(process, "net_connections", process.connections)(kind="inet")
    listening = {(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN}
    ports = {served.server.http_port, served.server.grpc_port, served.server.metrics_port}
    assert ports <= {port for _, port in listening}  # HTTP, gRPC and metrics all found
    # gRPC listens on an IPv6 socket at ::ffff:127.0.0.1, the IPv4-mapped form of loopback
    addresses = {ipaddress.ip_address(ip) for ip, _ in listening}
    unmapped = {str(getattr(a, "ipv4_mapped", None) or a) for a in addresses}
    assert unmapped == {"127.0.0.1"}, listening


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", ["tinyc", "tinyu"])
@pytest.mark.parametrize("output", ["float", "uint8"])
@pytest.mark.parametrize("source", ["z", "seed"])
def test_served_images_equal_eager_and_onnx_runtime(
    served: Served, protocol: str, name: str, output: str, source: str
) -> None:
    feeds, z, labels = request(name, source, [11, 12, 13])
    model = name if output == "float" else f"{name}_uint8"
    with TritonRunner(served.url(protocol), model, protocol) as runner:
        images = runner.run(feeds)
    eager = eager_images(served.checkpoints[name], z, labels)
    artifact = "fp32" if output == "float" else "uint8"
    in_process = ort_images(served.exports[name], artifact, z, labels)
    if output == "float":
        assert images.dtype == np.float32 and images.shape == eager.shape
        assert np.abs(images - eager).max() <= FP32_ATOL
        np.testing.assert_allclose(images, in_process, atol=1e-6)
    else:
        assert images.dtype == np.uint8 and images.shape == to_uint8_nhwc(eager).shape
        diff = np.abs(images.astype(int) - to_uint8_nhwc(eager).astype(int))
        assert diff.max() <= 1
        np.testing.assert_array_equal(images, in_process)


def test_dynamic_batching_runs_concurrent_requests_together_and_answers_each(
    served: Served,
) -> None:
    n = 12
    url = served.server.http_url
    before = inference_statistics(url, "tinyc")
    results: dict[int, np.ndarray] = {}
    barrier = threading.Barrier(n)

    def one(i: int) -> None:
        feeds, _, _ = request("tinyc", "seed" if i % 2 else "z", [100 + i])
        with TritonRunner(url, "tinyc") as runner:
            barrier.wait()
            results[i] = runner.run(feeds)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    after = inference_statistics(url, "tinyc")
    inferences = after["inference_count"] - before["inference_count"]
    executions = after["execution_count"] - before["execution_count"]
    assert inferences == n
    assert executions < inferences, f"{executions} executions for {inferences} requests"
    _, z, labels = request("tinyc", "z", [100 + i for i in range(n)])
    eager = eager_images(served.checkpoints["tinyc"], z, labels)
    for i in range(n):
        assert np.abs(results[i][0] - eager[i]).max() <= FP32_ATOL


BAD_REQUESTS = {
    "wrong shape": ("tinyc", {"z": np.zeros((1, 15), np.float32), "labels": np.zeros(1, np.int64)}),
    "wrong dtype": ("tinyc", {"z": np.zeros((1, 16), np.float64), "labels": np.zeros(1, np.int64)}),
    "batch above max": (
        "tinyc",
        {"z": np.zeros((9, 16), np.float32), "labels": np.zeros(9, np.int64)},
    ),
    "missing labels": ("tinyc", {"z": np.zeros((1, 16), np.float32)}),
    "missing z and seed": ("tinyc", {"labels": np.zeros(1, np.int64)}),
    "label out of range": ("tinyc", {"seed": np.array([1]), "labels": np.array([4])}),
    "NaN latents": ("tinyc", {"z": np.full((1, 16), np.nan, np.float32), "labels": np.array([0])}),
    "negative seed": ("tinyu", {"seed": np.array([-3])}),
    "unknown model": ("nope", {"z": np.zeros((1, 16), np.float32)}),
}
REFUSED = {"http": ("400", "404"), "grpc": ("StatusCode.INVALID_ARGUMENT", "StatusCode.NOT_FOUND")}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_bad_requests_are_refused_and_the_server_keeps_serving(
    served: Served, protocol: str, case: str
) -> None:
    model, feeds = BAD_REQUESTS[case]
    url = served.url(protocol)
    with TritonRunner(url, model, protocol) as runner, pytest.raises(InferenceError) as refused:
        runner.run(feeds)
    bad_request, not_found = REFUSED[protocol]
    assert refused.value.status == (not_found if case == "unknown model" else bad_request)
    good, z, labels = request("tinyc", "seed", [5, 6])
    with TritonRunner(url, "tinyc", protocol) as runner:
        images = runner.run(good)
    eager = eager_images(served.checkpoints["tinyc"], z, labels)
    assert np.abs(images - eager).max() <= FP32_ATOL


def _good_and_bad_together(url: str, good: dict, bad: dict) -> tuple[dict[str, object], int]:
    """Send both at once; returns the outcomes and how many executions the model made."""
    outcomes: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def one(key: str, feeds: dict[str, np.ndarray]) -> None:
        with TritonRunner(url, "tinyc") as runner:
            barrier.wait()
            try:
                outcomes[key] = runner.run(feeds)
            except InferenceError as e:
                outcomes[key] = e

    before = inference_statistics(url, "tinyc")["execution_count"]
    threads = [threading.Thread(target=one, args=a) for a in (("good", good), ("bad", bad))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    return outcomes, inference_statistics(url, "tinyc")["execution_count"] - before


def test_a_bad_request_in_a_batch_fails_alone(served: Served) -> None:
    good, z, labels = request("tinyc", "seed", [21])
    bad = {"seed": np.array([22]), "labels": np.array([99])}
    for _attempt in range(5):  # the two requests must share one execution (a batch) to count
        outcomes, executions = _good_and_bad_together(served.server.http_url, good, bad)
        if executions == 1:
            break
    assert executions == 1, "the good and the bad request never shared a batch in 5 tries"
    assert isinstance(outcomes["bad"], InferenceError)
    assert "label 99 is out of range" in str(outcomes["bad"])
    eager = eager_images(served.checkpoints["tinyc"], z, labels)
    assert isinstance(outcomes["good"], np.ndarray)
    assert np.abs(outcomes["good"] - eager).max() <= FP32_ATOL


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_generate_returns_the_seeds_images_drawn_on_either_side(
    served: Served, protocol: str
) -> None:
    url = served.url(protocol)
    images, info = generate(url, "tinyc", 5, protocol=protocol, label=2, seed=40)
    same, _ = generate(url, "tinyc", 5, protocol=protocol, label=2, seed=40, client_latents=True)
    assert info.num_classes == 4 and info.accepts_seed
    np.testing.assert_array_equal(images, same)
    z = draw_latents(range(40, 45), TINY_CONDITIONAL.latent_dim)
    eager = eager_images(served.checkpoints["tinyc"], z, np.full(5, 2))
    assert np.abs(images - eager).max() <= FP32_ATOL


def test_generate_command_writes_a_png_grid(served: Served, tmp_path: Path) -> None:
    out = tmp_path / "grid.png"
    args = ["generate", "--url", served.server.grpc_url, "--protocol", "grpc"]
    args += ["--model", "tinyu_uint8", "-n", "9", "--out", str(out)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    with Image.open(out) as png:
        assert png.format == "PNG" and png.width == png.height  # 3 x 3 tiles


def test_generate_refuses_a_label_the_model_does_not_have(served: Served) -> None:
    args = ["generate", "--url", served.server.http_url, "--model", "tinyc", "--label", "7"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code != 0
    assert "--label must be in [0, 3]" in str(result.exception)


def test_serve_command_serves_until_sigterm_and_leaves_nothing_behind(
    served: Served, tmp_path: Path
) -> None:
    ready = tmp_path / "ready.json"
    cmd = [sys.executable, "-m", "gendeploy", "serve", str(served.repo), "--ready-file", str(ready)]
    cmd += FREE_PORTS
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    endpoints: dict = {}
    try:
        out = tmp_path / "demo.png"
        args = ["generate", "--ready-file", str(ready), "--wait-s", "120"]
        args += ["--model", "tinyc", "-o", str(out)]
        result = CliRunner().invoke(app, args)  # waits for the server to write the ready file
        assert result.exit_code == 0, result.output
        assert out.is_file()
        endpoints = json.loads(ready.read_text())
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # leave nothing running: serve, server and stubs
            process.kill()
            if not endpoints and ready.is_file():
                endpoints = json.loads(ready.read_text())
            if endpoints.get("pid"):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(endpoints["pid"], signal.SIGKILL)
            process.communicate(timeout=10)
            raise
    assert process.returncode == 0, output
    assert "stopped" in output and f"http     {endpoints['http']}" in output
    assert not ready.exists()
    assert group_members(endpoints["pid"]) == []
    assert os.path.exists(endpoints["log"])


def test_a_sigkilled_serve_command_takes_its_tritonserver_down_with_it(
    served: Served, tmp_path: Path
) -> None:
    ready = tmp_path / "ready.json"
    cmd = [sys.executable, "-m", "gendeploy", "serve", str(served.repo), "--ready-file", str(ready)]
    cmd += FREE_PORTS
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = None
    try:
        deadline = time.monotonic() + 120
        while not ready.is_file() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ready.is_file(), "gendeploy serve never became ready"
        pid = json.loads(ready.read_text())["pid"]
        assert group_members(pid)
        process.kill()  # no handler runs: only the kernel can tell tritonserver
        process.wait(timeout=10)
        deadline = time.monotonic() + 60
        while group_members(pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert group_members(pid) == []
    finally:
        process.kill()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)


def version_files(version_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in version_dir.iterdir() if p.is_file()}


def test_a_new_export_becomes_version_2_without_touching_the_served_version_1(
    served: Served, tmp_path: Path
) -> None:
    """Rollout: v1 keeps serving until the server looks again (`serve --watch` does every 2 s);
    then v2, with the new weights, serves."""
    retrained = make_checkpoint(TINY_UNCONDITIONAL, tmp_path / "retrained.pt", seed=7)
    new_export = build_export(retrained, tmp_path / "export", "tinyu", max_batch=MAX_BATCH)
    options = RepoOptions(name="rollout")
    server = served.server
    feeds, z, _ = request("tinyu", "seed", [3, 4])
    assert write_repo(served.exports["tinyu"], served.repo, options)[0].version == 1
    assert server.refresh() == ["rollout", "rollout_uint8"]  # new models; rollout_onnx skipped
    v1_files = version_files(served.repo / "rollout" / "1")
    assert write_repo(served.exports["tinyu"], served.repo, options)[0].new is False
    assert server.refresh() == []  # nothing changed on disk
    assert write_repo(new_export, served.repo, options)[0].version == 2
    with TritonRunner(server.http_url, "rollout") as runner:
        before_reload = runner.run(feeds)
        assert sorted(server.refresh()) == ["rollout", "rollout_uint8"]
        after_reload = runner.run(feeds)
    assert version_files(served.repo / "rollout" / "1") == v1_files
    old = eager_images(served.checkpoints["tinyu"], z, None)
    new = eager_images(retrained, z, None)
    assert np.abs(before_reload - old).max() <= FP32_ATOL
    assert np.abs(after_reload - new).max() <= FP32_ATOL
    assert np.abs(new - old).max() > 0.01  # the two versions really differ
