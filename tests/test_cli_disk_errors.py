"""Disk and permission errors reach the user as one line naming the path and the cause, with a
non-zero exit code and nothing half-written: the real CLI, on real file systems (a file in the
way; a read-only and a full tmpfs, mounted in a private mount namespace where unshare allows it).
"""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY_CONDITIONAL_DCGAN, TINY_MLP, MakeCheckpoint

from gendeploy.errors import describe_os_error

GENDEPLOY = [sys.executable, "-m", "gendeploy"]


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_an_export_under_a_file_is_one_line_and_writes_nothing(
    make_checkpoint: MakeCheckpoint, tmp_path: Path
) -> None:
    in_the_way = tmp_path / "x"
    in_the_way.write_text("a file, not a directory")
    ckpt = make_checkpoint(TINY_MLP)
    args = [*GENDEPLOY, "export", str(ckpt), "--out", str(in_the_way / "e")]
    result = subprocess.run(args, capture_output=True, text=True, timeout=300)
    line = one_line_error(result)
    assert str(in_the_way) in line and "a file is in the way" in line
    assert in_the_way.read_text() == "a file, not a directory"


def _in_private_mount(mount_options: str, target: Path, command: list[str]) -> str:
    """Run ``command`` with a fresh tmpfs (``mount_options``) on ``target``, seen only by it;
    returns what it printed, then what ``target`` held afterwards (one name per line)."""
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no private mount namespace here: {probe.stderr.strip()}")
    script = (
        f'mount -t tmpfs -o {mount_options} tmpfs "$1" || exit 99; shift; "$@"; '
        'echo "rc=$?"; ls -A "$0"'
    )
    done = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, str(target), str(target), *command],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode == 99:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    return done.stdout + "\n---\n" + done.stderr


@pytest.mark.parametrize(
    ("mount_options", "cause"),
    [("ro", "Read-only file system"), ("size=64k", "No space left on device")],
)
def test_a_read_only_or_full_disk_is_one_line_and_leaves_nothing(
    make_checkpoint: MakeCheckpoint, tmp_path: Path, mount_options: str, cause: str
) -> None:
    target = tmp_path / "disk"
    target.mkdir()
    ckpt = make_checkpoint(TINY_CONDITIONAL_DCGAN)  # its ONNX (~100 kB) overflows the 64 kB disk
    output = _in_private_mount(
        mount_options, target, [*GENDEPLOY, "export", str(ckpt), "--out", str(target / "e")]
    )
    stdout, stderr = output.split("\n---\n")
    errors = [line for line in stderr.strip().splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: ") and cause in errors[0], stderr
    assert str(target) in errors[0]
    # the exit code, then `ls -A` of the disk: nothing left on it
    assert stdout.strip().splitlines() == ["rc=1"], stdout


def test_every_os_error_kind_gets_its_path_cause_and_fix() -> None:
    cases = {
        errno.EACCES: "fix its permissions",
        errno.EPERM: "fix its permissions",
        errno.EROFS: "read-only",
        errno.ENOSPC: "free some space",
        errno.ENOTDIR: "a file is in the way",
    }
    for code, fix in cases.items():
        line = describe_os_error(OSError(code, "cause text", "/some/path"))
        assert line.startswith("/some/path: cause text; ") and fix in line
        assert "\n" not in line
