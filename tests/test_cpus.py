"""Threads from the machine we really have: the affinity mask and the cgroup CPU quota (v1 and
v2, read from a fake file tree), and a thread count that steps down while another process keeps
one of our CPUs busy (a real busy process pinned to one core)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gendeploy import cpus
from gendeploy.errors import UsageError


def _tree(root: Path, cgroup: str, mountinfo: str, files: dict[str, str]) -> Path:
    (root / "proc/self").mkdir(parents=True)
    (root / "proc/self/cgroup").write_text(cgroup)
    (root / "proc/self/mountinfo").write_text(mountinfo)
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


V2_MOUNT = "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"


def test_a_cgroup_v2_quota_anywhere_up_the_path_caps_the_cpus(tmp_path: Path) -> None:
    """A pod limited to 1.5 CPUs on a 64-core node: the pod's cgroup has the quota, the
    container's none; threads are sized 2, not 64."""
    root = _tree(
        tmp_path,
        "0::/kubepods/pod1/ctr\n",
        V2_MOUNT,
        {
            "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max": "max 100000\n",
            "sys/fs/cgroup/kubepods/pod1/cpu.max": "150000 100000\n",
            "sys/fs/cgroup/cpu.max": "max 100000\n",
        },
    )
    assert cpus.cgroup_cpu_limit(root) == 1.5
    assert cpus.available_cpus(root, cpus=64) == 2
    assert cpus.available_cpus(root, cpus=1) == 1  # the affinity mask can be tighter


def test_no_quota_leaves_the_affinity_mask(tmp_path: Path) -> None:
    root = _tree(tmp_path, "0::/\n", V2_MOUNT, {"sys/fs/cgroup/cpu.max": "max 100000\n"})
    assert cpus.cgroup_cpu_limit(root) is None
    assert cpus.available_cpus(root, cpus=8) == 8


@pytest.mark.parametrize("mount_root", ["/", "/docker/abc"])
def test_a_cgroup_v1_cfs_quota_caps_the_cpus(tmp_path: Path, mount_root: str) -> None:
    """cgroup v1: ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` on the cpu controller's mount,
    whether the mount shows the whole hierarchy or only the container's part of it."""
    inner = "sys/fs/cgroup/cpu,cpuacct" + ("/docker/abc" if mount_root == "/" else "")
    mount = (
        f"40 31 0:38 {mount_root} /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup "
        "rw,cpu,cpuacct\n"
        "41 31 0:39 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    )
    root = _tree(
        tmp_path,
        "5:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/\n",
        mount,
        {f"{inner}/cpu.cfs_quota_us": "50000\n", f"{inner}/cpu.cfs_period_us": "100000\n"},
    )
    assert cpus.cgroup_cpu_limit(root) == 0.5
    assert cpus.available_cpus(root, cpus=16) == 1


def test_a_v1_quota_of_minus_one_is_no_quota(tmp_path: Path) -> None:
    mount = "40 31 0:38 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
    root = _tree(
        tmp_path,
        "4:cpu:/\n",
        mount,
        {"sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1\n", "sys/fs/cgroup/cpu/cpu.cfs_period_us": "1"},
    )
    assert cpus.cgroup_cpu_limit(root) is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this OS")
def test_a_restricted_affinity_mask_sizes_the_threads_in_that_process() -> None:
    """A real ``os.sched_setaffinity`` in a child: gendeploy sizes itself (and torch) from it."""
    first = min(os.sched_getaffinity(0))
    code = (
        "import json, os; from gendeploy import cpus\n"
        f"os.sched_setaffinity(0, {{{first}}})\n"
        "plan = cpus.configure(None)\n"
        "import torch\n"
        "print(json.dumps([cpus.available_cpus(), plan.threads, torch.get_num_threads(),"
        " plan.pinned]))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != cpus.ENV}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    # one CPU: nothing to adapt, so the count is fixed
    assert json.loads(done.stdout) == [1, 1, 1, True]


def test_threads_asked_for_are_pinned_and_bad_values_are_one_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(cpus.ENV, "3")
    assert cpus.requested_threads(None) == (3, f"${cpus.ENV}")
    assert cpus.requested_threads(2) == (2, "--threads")  # the flag wins
    monkeypatch.setenv(cpus.ENV, "many")
    with pytest.raises(UsageError, match=r"^\$GENDEPLOY_THREADS='many': set it to a thread count"):
        cpus.requested_threads(None)
    monkeypatch.delenv(cpus.ENV)
    assert cpus.requested_threads(None) == (None, "available CPUs")


def test_the_governor_runs_one_thread_fewer_per_core_a_co_tenant_keeps_busy() -> None:
    """Fed CPU times: others take a core -> 1 thread; they leave -> back to 2; half a core or
    less changes nothing (a quiet machine never moves)."""
    clock, busy, own = [0.0], [0.0], [0.0]
    applied: list[int] = []
    governor = cpus.Governor(
        2, applied.append, lambda: busy[0], lambda: own[0], lambda: clock[0], interval_s=2.0
    )

    def window(seconds: float, ours: float, others: float) -> int:
        clock[0] += seconds
        own[0] += ours * seconds
        busy[0] += (ours + others) * seconds
        return governor.poll()

    assert window(0.6, ours=2.0, others=0.3) == 2  # the first look comes early
    assert window(2.5, ours=1.0, others=1.0) == 1
    assert window(2.5, ours=1.0, others=0.95) == 1
    assert window(2.5, ours=1.0, others=0.1) == 2
    assert window(1.0, ours=2.0, others=2.0) == 2  # within the interval: no new decision
    assert applied == [1, 2]
    assert [threads for _, threads in governor.changes] == [1, 2]


@pytest.mark.skipif(
    not hasattr(os, "sched_setaffinity") or len(cpus.affinity_cpus()) < 2,
    reason="needs two CPUs and CPU affinity",
)
def test_a_busy_process_on_one_of_our_cores_is_measured_as_a_co_tenant() -> None:
    """A real busy loop pinned to one of our CPUs: /proc/stat minus our own time shows it (other
    work on the machine only adds to the figure, so this holds on a busy machine too)."""
    cpu = cpus.affinity_cpus()[-1]
    hog = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import os, time\nos.sched_setaffinity(0, {{{cpu}}})\nend = time.time() + 20\n"
            "while time.time() < end: pass\n",
        ]
    )
    try:
        ours = cpus.affinity_cpus()
        applied: list[int] = []
        governor = cpus.Governor(2, applied.append, lambda: cpus.busy_seconds(ours))
        time.sleep(1.0)
        assert governor.poll() == 1, governor.other
        assert governor.other > 0.6 and applied == [1]
    finally:
        hog.kill()
        hog.wait()
