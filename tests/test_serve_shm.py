"""Nothing left in /dev/shm: however a tritonserver gendeploy started ends, its python stubs'
shared-memory regions, all named with gendeploy's prefix (``serve.shm``), are removed.

The stubs' own command lines name their regions (``conftest.stub_regions``), so each test checks
the exact files its server had, not a guess from names. The session-wide check in conftest
watches every other starter the suite runs (bench, soak, tune's Model Analyzer, the tests'
own container-flag servers).
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import stub_regions
from serve_support import (
    FREE_PORTS,
    TINY_CONDITIONAL,
    build_export,
    make_checkpoint,
    require_tritonserver,
)

from gendeploy.serve.repo import write_repo
from gendeploy.serve.server import TritonServer
from gendeploy.serve.shm import SHM_DIR, remove_stale_regions

pytestmark = pytest.mark.triton

STUBS = 4  # tinyc and tinyc_uint8, two instances each on CPU: one region per stub


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_tritonserver()
    root = tmp_path_factory.mktemp("shm")
    export = build_export(make_checkpoint(TINY_CONDITIONAL, root / "c.pt"), root / "e", "tinyc")
    write_repo(export, root / "repo")
    return root / "repo"


def regions_of(root: int, timeout_s: float = 60.0) -> list[str]:
    """The regions of the ``STUBS`` stubs under ``root``, once they all run."""
    deadline = time.monotonic() + timeout_s
    while len(found := stub_regions(root)) < STUBS and time.monotonic() < deadline:
        time.sleep(0.2)
    assert len(found) == STUBS, found
    return sorted(found.values())


def existing(regions: list[str]) -> list[str]:
    return [r for r in regions if (SHM_DIR / r).exists()]


def wait_gone(pid: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"process {pid} still runs")


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_gendeploy_serve_stopped_or_killed_leaves_no_region(
    repo: Path, tmp_path: Path, stop: signal.Signals
) -> None:
    """SIGTERM: serve stops its server. SIGKILL: the kernel sends the server SIGTERM (serve
    armed it), and Triton, stopping gracefully, removes its regions itself."""
    ready = tmp_path / "ready.json"
    cmd = [sys.executable, "-m", "gendeploy", "serve", str(repo), "--ready-file", str(ready)]
    with (tmp_path / "serve.err").open("w") as err:
        process = subprocess.Popen([*cmd, *FREE_PORTS], stdout=subprocess.DEVNULL, stderr=err)
    try:
        regions = regions_of(process.pid)
        deadline = time.monotonic() + 60
        while not ready.is_file() and time.monotonic() < deadline:
            time.sleep(0.2)
        server_pid = json.loads(ready.read_text())["pid"]
        assert all(r.startswith("gendeploy_server_") for r in regions), regions
        assert existing(regions) == regions
        process.send_signal(stop)
        process.wait(timeout=60)
        wait_gone(server_pid)
        assert existing(regions) == []
    finally:
        process.kill()
        process.wait(timeout=30)


def test_a_killed_tritonserver_leaves_regions_that_its_starter_removes(
    repo: Path, tmp_path: Path
) -> None:
    """Server and stubs killed at once (nobody in them can clean up): the regions stay until
    the starter reaps the server, which removes them (a restart does the same)."""
    server = TritonServer(repo, log_path=tmp_path / "server.log").start()
    try:
        assert server.process is not None
        regions = regions_of(os.getpid())
        os.killpg(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=30)
        assert existing(regions) == regions  # a kill leaves them: the check below can fail
    finally:
        server.stop()
    assert existing(regions) == []


STARTER = """
import json, sys, time
from gendeploy.serve.server import TritonServer
server = TritonServer(sys.argv[1], log_path=sys.argv[2]).start()
print(json.dumps({"pid": server.process.pid}), flush=True)
time.sleep(600)
"""


def test_regions_of_a_server_killed_with_its_starter_go_at_the_next_start(
    repo: Path, tmp_path: Path
) -> None:
    """Starter and server both killed (an OOM kill, a container stopped): the next server
    gendeploy starts removes their regions, and not those of a server still running."""
    with TritonServer(repo, log_path=tmp_path / "live.log") as live:
        assert live.process is not None
        kept = regions_of(live.process.pid)
        starter = subprocess.Popen(
            [sys.executable, "-c", STARTER, str(repo), str(tmp_path / "killed.log")],
            stdout=subprocess.PIPE,
            text=True,
        )
        with contextlib.ExitStack() as held:
            try:
                assert starter.stdout is not None
                server_pid = json.loads(starter.stdout.readline())["pid"]
                orphaned = regions_of(server_pid)
                # mapped here until checked: a server another pytest process starts meanwhile
                # removes stale regions too (as it should), but not mapped ones
                for name in orphaned:
                    with (SHM_DIR / name).open("rb") as f:
                        held.enter_context(mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ))
                os.killpg(server_pid, signal.SIGKILL)
                starter.kill()
            finally:
                starter.kill()
                starter.wait(timeout=30)
            wait_gone(server_pid)
            assert existing(orphaned) == orphaned
            assert not {p.name for p in remove_stale_regions()} & set(orphaned)  # still mapped
        remove_stale_regions()  # what the next start does (or did, in a process beside this one)
        assert existing(orphaned) == [] and existing(kept) == kept
        assert existing(orphaned) == [] and existing(kept) == kept
