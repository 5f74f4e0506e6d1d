"""Locked management against a real tritonserver: no client without the admin key can load code,
unload a model, register shared memory or change logging and tracing, over HTTP or gRPC; health,
metadata, configs, inference and statistics stay open; the key unlocks gendeploy's own operations.

The module's server runs in explicit model-control mode (what `serve --watch` uses), the mode in
which a model load carrying its own ``model.py`` would run that code.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from serve_support import (
    TINY_CONDITIONAL,
    build_export,
    eager_images,
    make_checkpoint,
    require_tritonserver,
)

from gendeploy.errors import ServeError
from gendeploy.runtime.triton import InferenceError, TritonRunner
from gendeploy.seeds import draw_latents
from gendeploy.serve.admin import (
    ADMIN_HEADER,
    admin_headers,
    new_key,
    read_key_file,
    write_key_file,
)
from gendeploy.serve.docker import tritonserver_args
from gendeploy.serve.repo import RepoOptions, write_repo
from gendeploy.serve.server import TritonServer, free_port
from gendeploy.serve.tritonserver import find_tritonserver

pytestmark = pytest.mark.triton


@dataclass
class Locked:
    server: TritonServer
    checkpoint: Path
    marker: Path  # the file the intruder's model.py would write


@pytest.fixture(scope="module")
def locked(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Locked]:
    require_tritonserver()
    root = tmp_path_factory.mktemp("locked")
    checkpoint = make_checkpoint(TINY_CONDITIONAL, root / "cond.pt")
    write_repo(build_export(checkpoint, root / "export", "tinyc"), root / "repo")
    server = TritonServer(root / "repo", log_path=root / "tritonserver.log", watch=True)
    server.start()
    try:
        yield Locked(server, checkpoint, root / "intruder-was-here")
    finally:
        server.stop()


def http(
    url: str, path: str, body: dict | None = None, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """(status, body) of a raw request: GET without ``body``, POST with it."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://{url}{path}", data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def intruder_model(marker: Path) -> tuple[str, bytes]:
    """A python-backend model config and a model.py that writes ``marker`` when it loads."""
    config = {
        "backend": "python",
        "max_batch_size": 0,
        "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": [1]}],
        "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": [1]}],
    }
    code = (
        "class TritonPythonModel:\n"
        "    def initialize(self, args):\n"
        f"        open({str(marker)!r}, 'w').write('owned')\n"
        "    def execute(self, requests):\n"
        "        return []\n"
    )
    return json.dumps(config), code.encode()


def assert_still_serving(locked: Locked) -> None:
    z = draw_latents([7], TINY_CONDITIONAL.latent_dim)
    labels = np.array([1], np.int64)
    with TritonRunner(locked.server.http_url, "tinyc") as runner:
        images = runner.run({"z": z, "labels": labels})
    eager = eager_images(locked.checkpoint, z, labels)
    assert np.abs(images - eager).max() <= 1e-4


def test_an_http_client_without_the_key_cannot_load_a_model_carrying_its_own_code(
    locked: Locked,
) -> None:
    config, code = intruder_model(locked.marker)
    body = {"parameters": {"config": config, "file:1/model.py": base64.b64encode(code).decode()}}
    status, text = http(locked.server.http_url, "/v2/repository/models/evil/load", body)
    assert status == 403 and ADMIN_HEADER in text
    time.sleep(1.0)  # a load that got through would have run initialize() by now
    assert not locked.marker.exists()
    assert http(locked.server.http_url, "/v2/models/evil/ready")[0] != 200


def test_a_grpc_client_without_the_key_cannot_load_a_model_carrying_its_own_code(
    locked: Locked,
) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    config, code = intruder_model(locked.marker)
    client = grpcclient.InferenceServerClient(locked.server.grpc_url)
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            client.load_model("evil", config=config, files={"file:1/model.py": code})
    finally:
        client.close()
    time.sleep(1.0)
    assert not locked.marker.exists()


LOCKED_HTTP = {
    "unload the served model": ("/v2/repository/models/tinyc/unload", {}),
    "list the repository": ("/v2/repository/index", {}),
    "register shared memory": (
        "/v2/systemsharedmemory/region/r0/register",
        {"key": "/gendeploy-test", "offset": 0, "byte_size": 64},
    ),
    "change logging": ("/v2/logging", {"log_verbose_level": 1}),
    "change tracing": ("/v2/trace/setting", {"trace_level": ["TIMESTAMPS"]}),
}


@pytest.mark.parametrize("case", list(LOCKED_HTTP))
def test_http_management_apis_refuse_a_client_without_the_key(locked: Locked, case: str) -> None:
    path, body = LOCKED_HTTP[case]
    status, text = http(locked.server.http_url, path, body)
    assert status == 403, (status, text)
    assert_still_serving(locked)


@pytest.mark.parametrize("case", ["unload", "index", "shared memory", "logging", "trace"])
def test_grpc_management_apis_refuse_a_client_without_the_key(locked: Locked, case: str) -> None:
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(locked.server.grpc_url)
    calls = {
        "unload": lambda: client.unload_model("tinyc"),
        "index": lambda: client.get_model_repository_index(),
        "shared memory": lambda: client.register_system_shared_memory("r0", "/gendeploy-t", 64),
        "logging": lambda: client.update_log_settings({"log_verbose_level": 1}),
        "trace": lambda: client.update_trace_settings(settings={"trace_level": ["TIMESTAMPS"]}),
    }
    try:
        with pytest.raises(InferenceServerException, match="restricted"):
            calls[case]()
    finally:
        client.close()
    assert_still_serving(locked)


@pytest.mark.parametrize(
    "path",
    [
        "/v2/health/ready",
        "/v2/health/live",
        "/v2",
        "/v2/models/tinyc",
        "/v2/models/tinyc/config",
        "/v2/models/tinyc/stats",
    ],
)
def test_health_metadata_config_and_statistics_stay_open(locked: Locked, path: str) -> None:
    assert http(locked.server.http_url, path)[0] == 200


def test_with_the_key_gendeploys_own_operations_work(locked: Locked) -> None:
    server = locked.server
    headers = server.admin_headers()
    status, text = http(server.http_url, "/v2/repository/index", {}, headers)
    assert status == 200 and {"name": "tinyc", "version": "1", "state": "READY"} in json.loads(text)
    server.load("tinyc")  # what `serve --watch` does on a new version
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(server.grpc_url)
    try:
        index = client.get_model_repository_index(headers=server.admin_headers("grpc"))
    finally:
        client.close()
    assert "tinyc" in {m.name for m in index.models}
    assert http(server.http_url, "/v2/repository/index", {}, {ADMIN_HEADER: "x" * 20})[0] == 403
    assert_still_serving(locked)


def test_the_container_command_locks_the_same_apis_and_fixes_its_models(
    locked: Locked, tmp_path: Path
) -> None:
    """`serve --docker`'s tritonserver flags, run on the pip tritonserver: the NGC image cannot
    run here, its flags can. The models are fixed at start: even the key cannot load one."""
    binary = find_tritonserver()
    key = new_key()
    http_port = free_port()
    args = [
        a.replace("${GENDEPLOY_ADMIN_KEY}", key)
        for a in tritonserver_args("${GENDEPLOY_ADMIN_KEY}")
    ]
    cmd = [str(binary.executable), *args[1:]]
    cmd = [
        a.replace("--model-repository=/models", f"--model-repository={locked.server.repo_dir}")
        for a in cmd
    ]
    cmd += [f"--backend-directory={binary.backend_dir}", "--http-address=127.0.0.1"]
    cmd += ["--grpc-address=127.0.0.1", f"--http-port={http_port}", f"--grpc-port={free_port()}"]
    cmd += ["--allow-metrics=false", "--exit-on-error=false", "--strict-readiness=false"]
    log = (tmp_path / "container-flags.log").open("wb")
    process = subprocess.Popen(
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, **binary.env},
        start_new_session=True,
    )
    url = f"127.0.0.1:{http_port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and http_ready(url) is False:
            assert process.poll() is None, (tmp_path / "container-flags.log").read_text()[-2000:]
            time.sleep(0.25)
        assert http(url, "/v2/models/tinyc/ready")[0] == 200
        assert http(url, "/v2/repository/index", {})[0] == 403
        status, text = http(url, "/v2/repository/models/tinyc/unload", {}, {ADMIN_HEADER: key})
        assert status != 200 and "not allowed" in text  # model control "none": fixed models
        assert http(url, "/v2/models/tinyc/ready")[0] == 200
    finally:
        os.killpg(process.pid, 9)
        process.wait(timeout=30)
        log.close()


def http_ready(url: str) -> bool:
    try:
        return http(url, "/v2/health/ready")[0] == 200
    except OSError:
        return False


def test_the_admin_key_file_is_private_and_a_shared_one_is_refused(tmp_path: Path) -> None:
    key = new_key()
    path = write_key_file(tmp_path / "admin.key", key)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert read_key_file(path) == key
    path.chmod(0o640)
    with pytest.raises(ServeError, match=r"readable by other users; chmod 600"):
        read_key_file(path)
    assert admin_headers(key, "grpc") == {f"triton-grpc-protocol-{ADMIN_HEADER}": key}


def test_a_flood_beyond_the_queue_limit_is_refused_and_the_server_keeps_serving(
    locked: Locked, tmp_path: Path
) -> None:
    """``max_queue_size`` (Triton's queue policy) bounds what waiting requests can cost: the
    rest get 503 at once. A long batching delay keeps requests queued while the flood arrives."""
    export_dir = locked.server.repo_dir.parent / "export"
    options = RepoOptions(max_queue_size=1, queue_delay_us=500_000)
    write_repo(export_dir, tmp_path / "repo", options)
    outcomes: list[str] = []
    with TritonServer(tmp_path / "repo", log_path=tmp_path / "server.log") as server:
        barrier = threading.Barrier(32)

        def one(seed: int) -> None:
            with TritonRunner(server.http_url, "tinyc") as runner:
                barrier.wait()
                try:
                    runner.run({"seed": np.array([seed]), "labels": np.array([0])})
                    outcomes.append("ok")
                except InferenceError as e:
                    outcomes.append(f"{e.status} {e}")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(32)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        refused = [o for o in outcomes if o != "ok"]
        assert len(outcomes) == 32 and refused and len(refused) < 32
        assert all(o.startswith("503") and "Exceeds maximum queue size" in o for o in refused)
        assert server.running()


def test_the_runtime_directory_must_be_a_plain_private_directory_of_the_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gendeploy.serve.admin import runtime_dir

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    made = runtime_dir()
    assert made == tmp_path / "gendeploy" and stat.S_IMODE(made.stat().st_mode) == 0o700
    made.rmdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (tmp_path / "gendeploy").symlink_to(elsewhere)  # planted: keys would land in elsewhere
    with pytest.raises(ServeError, match="is not a plain directory"):
        runtime_dir()
    assert stat.S_IMODE(elsewhere.stat().st_mode) == 0o755  # not chmod-ed through the link
    if os.geteuid() == 0:  # root can make a directory that belongs to someone else
        (tmp_path / "gendeploy").unlink()
        (tmp_path / "gendeploy").mkdir()
        os.chown(tmp_path / "gendeploy", 65534, 65534)
        with pytest.raises(ServeError, match="belongs to user 65534, not to you"):
            runtime_dir()
