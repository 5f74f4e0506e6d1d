"""`gendeploy serve` keeps a real tritonserver up: a request that crashes tritonserver 2.51 (an
input shape of 10^12 elements: ``std::bad_alloc`` in its HTTP frontend, before any model code) is
followed by correct images within seconds without anyone's help, however often it is sent; the
crash is logged with its cause and the client connected when it died; the crashed server's shared
memory is removed; a server that cannot start again ends in a clear give-up error with no process
left behind; gRPC only (`--no-http`) refuses the same request and stays up.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import stat
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from serve_support import (
    TINY_CONDITIONAL,
    Serving,
    build_export,
    eager_images,
    make_checkpoint,
    require_tritonserver,
    serving,
)

from gendeploy.errors import GendeployError
from gendeploy.runtime.triton import TritonRunner
from gendeploy.seeds import draw_latents
from gendeploy.serve.admin import ADMIN_HEADER, read_key_file
from gendeploy.serve.readyfile import ServeState
from gendeploy.serve.repo import write_repo
from gendeploy.serve.server import group_members
from gendeploy.serve.shm import SHM_DIR
from gendeploy.serve.supervisor import RestartPolicy, Supervisor

pytestmark = pytest.mark.triton

# 317 bytes that abort tritonserver 2.51 (std::bad_alloc, SIGABRT)
CRASH = {"inputs": [{"name": "z", "shape": [1, 1000000000000], "datatype": "FP32", "data": [0]}]}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require_tritonserver()
    root = tmp_path_factory.mktemp("supervised")
    checkpoint = make_checkpoint(TINY_CONDITIONAL, root / "cond.pt")
    write_repo(build_export(checkpoint, root / "export", "tinyc"), root / "repo")
    return root / "repo", checkpoint


def crash(url: str) -> None:
    request = urllib.request.Request(
        f"http://{url}/v2/models/tinyc/infer", json.dumps(CRASH).encode()
    )
    with pytest.raises((urllib.error.URLError, ConnectionError)):  # the server dies mid-request
        urllib.request.urlopen(request, timeout=30)


def images_when_back(serving: Serving, deadline_s: float) -> tuple[np.ndarray, float]:
    """What a client retrying every quarter second gets, and after how many seconds."""
    start = time.monotonic()
    z = draw_latents([3, 4], TINY_CONDITIONAL.latent_dim)
    feeds = {"z": z, "labels": np.array([1, 2], np.int64)}
    while time.monotonic() - start < deadline_s:
        with (
            contextlib.suppress(GendeployError, OSError, ValueError),
            TritonRunner(serving.state().http, "tinyc", timeout_s=5) as runner,
        ):
            return runner.run(feeds), time.monotonic() - start
        time.sleep(0.25)
    raise AssertionError(f"no images within {deadline_s}s: {serving.stderr.read_text()[-2000:]}")


def wait_serving(serve: Serving, restarts: int = 1) -> ServeState:
    """The state once serve has recorded the restart (it does once it sees the server ready)."""
    deadline = time.monotonic() + 10
    state = serve.state()
    while (state.state, state.restarts) != ("serving", restarts) and time.monotonic() < deadline:
        time.sleep(0.2)
        state = serve.state()
    return state


def shm_regions(serve_pid: int) -> set[str]:
    return {p.name for p in SHM_DIR.glob(f"gendeploy_server_{serve_pid}_*")}


def test_a_crashing_request_is_followed_by_correct_images_within_30_s(
    repo: tuple[Path, Path], tmp_path: Path
) -> None:
    with serving(repo, tmp_path) as serve:
        before = serve.state()
        assert before.state == "serving" and before.restarts == 0
        regions = shm_regions(before.serve_pid)
        assert regions, "the python backend's shared memory is named with the server's prefix"
        crash(before.http)
        images, seconds = images_when_back(serve, deadline_s=30)
        z = draw_latents([3, 4], TINY_CONDITIONAL.latent_dim)
        eager = eager_images(serve.checkpoint, z, np.array([1, 2]))
        assert np.abs(images - eager).max() <= 1e-4
        after = wait_serving(serve)
        assert after.restarts == 1 and after.state == "serving", (after, serve.stderr.read_text())
        assert (after.http, after.started) == (before.http, before.started)  # same ports
        assert after.pid != before.pid and after.since >= before.since
        assert after.last_crash is not None and "SIGABRT" in after.last_crash["status"]
        assert "bad_alloc" in after.last_crash["cause"]
        log = serve.stderr.read_text()
        assert "tritonserver died (killed by SIGABRT)" in log and "std::bad_alloc" in log
        assert not regions & shm_regions(before.serve_pid), "the crashed server's shm is left"
        print(f"images again {seconds:.1f}s after the crash")


def test_without_watch_not_even_the_key_can_load_or_unload(
    repo: tuple[Path, Path], tmp_path: Path
) -> None:
    with serving(repo, tmp_path) as serve:
        state = serve.state()
        key_file = Path(state.admin_key_file)
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        key = read_key_file(key_file)
        request = urllib.request.Request(
            f"http://{state.http}/v2/repository/models/tinyc/unload", b"{}", {ADMIN_HEADER: key}
        )
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=30)
        assert "not allowed" in refused.value.read().decode()
    assert not key_file.exists(), "a generated key outlived its server"


@pytest.mark.slow  # twelve crashes and restarts: about a minute
def test_twelve_hostile_requests_in_a_row_never_switch_the_service_off(
    repo: tuple[Path, Path], tmp_path: Path
) -> None:
    """Anyone who can reach the HTTP port can crash Triton 2.51; each crash costs seconds, never
    the service: correct images come back within 10 s every time, and the log names the client
    that had a connection open at every crash."""
    z = draw_latents([3, 4], TINY_CONDITIONAL.latent_dim)
    with serving(repo, tmp_path) as serve:
        eager = eager_images(serve.checkpoint, z, np.array([1, 2]))
        for n in range(1, 13):
            crash(serve.state().http)
            images, seconds = images_when_back(serve, deadline_s=10)
            assert np.abs(images - eager).max() <= 1e-4
            assert wait_serving(serve, restarts=n).restarts == n, serve.stderr.read_text()
            print(f"crash {n}: images again {seconds:.1f}s later")
        assert serve.process.poll() is None, "serve gave up"
        log = serve.stderr.read_text()
        assert log.count("tritonserver died (killed by SIGABRT)") == 12
        assert "connections open when it died: 127.0.0.1 (http; at 12 of the last 12 crashes)" in (
            log
        )


def test_a_server_that_cannot_start_again_gives_up_with_one_line(
    repo: tuple[Path, Path], tmp_path: Path
) -> None:
    """After a crash another process takes the server's gRPC port: every restart fails before
    ready, and serve gives up after --max-failed-starts with one line and nothing running."""
    with serving(repo, tmp_path, "--max-failed-starts", "2", "--crash-window-s", "300") as serve:
        first = serve.state()
        port = int(first.grpc.rsplit(":", 1)[1])
        crash(first.http)
        with socket.socket() as thief:
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            # free once serve has reaped the dead server and its stubs; the restart waits 0.5 s
            deadline = time.monotonic() + 20
            while True:
                try:
                    thief.bind(("127.0.0.1", port))
                    break
                except OSError:
                    assert time.monotonic() < deadline, "the dead server's port stayed taken"
                    time.sleep(0.01)
            thief.listen()
            code = serve.process.wait(timeout=60)
        assert code == 1
        err = serve.stderr.read_text().strip().splitlines()
        assert err[-1].startswith(
            "error: tritonserver failed to start 2 times in 300s (last: port "
        )
        assert "is in use" in err[-1] and "giving up" in err[-1]
        assert not serve.ready.exists(), "the state file must not claim a server that gave up"
        deadline = time.monotonic() + 20  # killed stubs are reaped by init: give it a moment
        while first.pid is not None and group_members(first.pid) and time.monotonic() < deadline:
            time.sleep(0.25)
        assert first.pid is not None and group_members(first.pid) == []
        assert shm_regions(first.serve_pid) == set()


def test_grpc_only_refuses_the_request_that_crashes_http_and_stays_up(
    repo: tuple[Path, Path], tmp_path: Path
) -> None:
    """`serve --no-http`: no HTTP port; the same 10^12-element shape over gRPC is refused with
    INVALID_ARGUMENT and the server serves on, without a restart."""
    import grpc
    from tritonclient.grpc import service_pb2, service_pb2_grpc

    with serving(repo, tmp_path, "--no-http") as serve:
        state = serve.state()
        assert state.http is None and state.url("grpc") == state.grpc
        with pytest.raises(GendeployError, match="serves gRPC only: pass --protocol grpc"):
            state.url("http")
        request = service_pb2.ModelInferRequest(model_name="tinyc")
        tensor = request.inputs.add(name="z", datatype="FP32", shape=[1, 10**12])
        assert tensor is not None
        request.raw_input_contents.append(b"\0\0\0\0")
        with grpc.insecure_channel(state.grpc) as channel:
            stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.ModelInfer(request, timeout=30)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        z = draw_latents([3, 4], TINY_CONDITIONAL.latent_dim)
        with TritonRunner(state.grpc, "tinyc", "grpc", timeout_s=30) as runner:
            images = runner.run({"z": z, "labels": np.array([1, 2], np.int64)})
        eager = eager_images(serve.checkpoint, z, np.array([1, 2]))
        assert np.abs(images - eager).max() <= 1e-4
        assert serve.state().restarts == 0 and serve.process.poll() is None


@pytest.mark.slow  # end to end, over 10 s here
@pytest.mark.parametrize("watch", [False, True])
def test_a_restart_serves_what_was_served_not_a_version_written_since(
    repo: tuple[Path, Path], tmp_path: Path, watch: bool
) -> None:
    """A broken version 2 appears on disk (with --watch, its load fails and is reported); after
    a crash the restarted server still serves version 1, instead of failing to start on v2."""
    copy = tmp_path / "repo"
    shutil.copytree(repo[0], copy)
    flags = ("--watch",) if watch else ()
    with serving((copy, repo[1]), tmp_path, *flags) as serve:
        broken = copy / "tinyc" / "2"
        shutil.copytree(copy / "tinyc" / "1", broken)
        (broken / "model.onnx").write_bytes(b"not an onnx model")
        if watch:
            deadline = time.monotonic() + 30
            while "could not load 'tinyc'" not in serve.stderr.read_text():
                assert time.monotonic() < deadline, serve.stderr.read_text()
                time.sleep(0.5)
        crash(serve.state().http)
        images, _ = images_when_back(serve, deadline_s=30)
        eager = eager_images(serve.checkpoint, draw_latents([3, 4], 16), np.array([1, 2]))
        assert np.abs(images - eager).max() <= 1e-4
        assert wait_serving(serve).restarts == 1


def test_the_backoff_doubles_up_to_its_cap_and_only_failed_starts_give_up(
    tmp_path: Path,
) -> None:
    from gendeploy.errors import ServeError
    from gendeploy.serve.server import TritonServer

    policy = RestartPolicy(max_failed_starts=2, window_s=60, first_backoff_s=0.5, max_backoff_s=3)
    supervisor = Supervisor(TritonServer(tmp_path), policy, say=lambda _: None)
    waits = []
    for _ in range(20):  # crashes while serving: never a give-up
        supervisor.record("killed by SIGABRT", "cause", started=True)
        waits.append(supervisor.backoff_s(time.monotonic()))
    assert waits[:5] == [0.5, 1.0, 2.0, 3.0, 3.0] and set(waits[5:]) == {3.0}
    assert supervisor.backoff_s(time.monotonic() + 61) == 0.5  # old crashes left the window
    supervisor.record("did not start", "port in use", started=False)
    with pytest.raises(ServeError, match=r"failed to start 2 times in 60s \(last: port in use\)"):
        supervisor.record("did not start", "port in use", started=False)


@pytest.mark.triton
def test_a_flag_tritonserver_refuses_is_named_not_a_line_of_its_usage(
    repo: tuple[Path, Path], tmp_path: Path
) -> None:
    """tritonserver prints its usage after a bad flag: the error names the flag."""
    from gendeploy.errors import ServeError
    from gendeploy.serve.server import TritonServer

    server = TritonServer(
        repo[0], log_path=tmp_path / "server.log", extra_args=("--no-such-flag=1",)
    )
    try:
        with pytest.raises(ServeError, match=r"unrecognized option '--no-such-flag=1'") as caught:
            server.start()
    finally:
        server.stop()
    assert "address" not in str(caught.value)
