"""Safe publishing: build in a hidden temporary directory beside the destination, rename into place.

An interrupted or failed export removes its staging directory and never touches an earlier
export; replacing one (``--force``) swaps directories with two renames on the same filesystem.
A staging directory left by a killed export (its name holds the exporting process's id) is
removed by the next export to the same place once that process is gone.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from gendeploy.errors import ExportError, UsageError
from gendeploy.export.manifest import MANIFEST_NAME

STAGING_PREFIX = ".gendeploy-staging-"


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A fresh directory next to ``out``, removed unless it was published."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    prefix = f"{STAGING_PREFIX}{out.name}-pid{os.getpid()}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    tmp.chmod(0o777 & ~umask)  # mkdtemp makes it 0700; the export must be readable like any dir
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op once published (renamed away)


def remove_stale_staging(out: Path) -> list[Path]:
    """Delete staging directories for ``out`` whose exporting process no longer runs.

    Only unpublished builds are touched; a set-aside earlier export (``-old-``) never is.
    """
    prefix = f"{STAGING_PREFIX}{out.name}-pid"
    removed = []
    for path in out.parent.glob(f"{glob.escape(prefix)}*"):
        # mkdtemp's random suffix has no "-": a longer export name cannot match by accident.
        match = re.fullmatch(r"(\d+)-[^-]+", path.name[len(prefix) :])
        if match and path.is_dir() and not _alive(int(match.group(1))):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def check_destination(out: Path) -> None:
    """Refuse to replace a directory that is not a gendeploy export (``--force`` or not)."""
    if out.exists() and not (out / MANIFEST_NAME).is_file():  # noqa: SIM102
        if not out.is_dir() or any(out.iterdir()):
            raise UsageError(f"{out} exists and is not a gendeploy export; choose another --out")


def publish(staged: Path, out: Path) -> None:
    """Move ``staged`` to ``out``, replacing an earlier export there.

    The earlier export is set aside and deleted only once the new one is in place; if the new one
    cannot be moved in and the earlier one cannot be put back, it is kept and its path named.
    """
    _fsync_tree(staged)
    if not out.exists():
        os.replace(staged, out)
        return
    old = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{out.name}-old-", dir=out.parent))
    os.replace(out, old / "previous")
    try:
        os.replace(staged, out)
    except BaseException as error:
        try:
            os.replace(old / "previous", out)  # put the earlier export back
        except OSError as e:
            raise ExportError(
                f"could not publish {out} ({error}) nor restore the earlier export ({e}); "
                f"it is kept at {old / 'previous'}"
            ) from None
        old.rmdir()
        raise
    shutil.rmtree(old, ignore_errors=True)  # the new export is in place: drop the earlier one


def _fsync_tree(root: Path) -> None:
    for path in root.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
