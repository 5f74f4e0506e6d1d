"""Safe publishing: build in a hidden temporary directory beside the destination, rename into place.

An interrupted or failed export removes its staging directory and never touches an earlier
export; replacing one (``--force``) sets the earlier export aside, renames the new one into place,
then deletes the earlier one. Each staging directory has a lock file beside it, held (``flock``)
for as long as its export runs; SIGTERM and SIGHUP raise while an export runs
(``signals_raise``), so its own cleanup runs, and the next export to the same place removes any
staging directory whose lock is free, that is one left by an export that was killed outright.
Publishing to one place holds that place's lock (``destination_lock``): concurrent exports
publish one after the other, and an export killed between its two renames is repaired by the
next one (its earlier export restored, or the set-aside copy removed). Locks work across
containers sharing a bind mount and on NFSv4, where process ids would not.
"""

from __future__ import annotations

import fcntl
import glob
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType

from gendeploy.errors import ExportError, Interrupted, UsageError
from gendeploy.manifest import MANIFEST_NAME

STAGING_PREFIX = ".gendeploy-staging-"
LOCK_SUFFIX = ".lock"
ASIDE_PREFIX = ".gendeploy-previous."  # + 8 random characters + "." + the export's name


_TERMINATING = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def signals_raise() -> Iterator[None]:
    """While it is held, SIGTERM and SIGHUP raise ``Interrupted`` in the main thread (SIGINT
    raises KeyboardInterrupt already): their default action ends the process at once, past every
    ``finally``, and left the staging directory and its lock behind. The earlier handlers come
    back afterwards. Elsewhere than in the main thread nothing changes (Python lets only the main
    thread set handlers); SIGKILL cannot be caught: ``remove_stale_staging`` is for that."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum)

    previous = {sig: signal.signal(sig, handler) for sig in _TERMINATING}
    try:
        yield
    finally:
        for sig, earlier in previous.items():
            signal.signal(sig, earlier)


@contextmanager
def staging_dir(out: Path) -> Iterator[Path]:
    """A fresh directory next to ``out``, locked while in use, removed unless it was published."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out)
    fd, lock = _locked_file(out.parent, f"{STAGING_PREFIX}{out.name}-")
    tmp = lock.with_name(lock.name.removesuffix(LOCK_SUFFIX))
    try:
        tmp.mkdir()
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # the export must be readable like any directory
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # a no-op once published (renamed away)
        lock.unlink(missing_ok=True)
        os.close(fd)


def _locked_file(parent: Path, prefix: str) -> tuple[int, Path]:
    """A new lock file, held; retried if a cleaner took it between creation and locking."""
    while True:
        fd, name = tempfile.mkstemp(prefix=prefix, suffix=LOCK_SUFFIX, dir=parent)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(name).st_ino == os.fstat(fd).st_ino:
                return fd, Path(name)
        except FileNotFoundError:
            pass
        os.close(fd)


def remove_stale_staging(out: Path) -> list[Path]:
    """Delete the staging directories beside ``out`` (of any export's name) whose export no
    longer runs: its lock is not held, so the process that made it is gone (killed, or the
    machine lost power). One that runs holds its lock and is left alone.

    A set-aside earlier export (``ASIDE_PREFIX``) is never touched: ``repair_interrupted`` is.
    """
    removed = []
    for lock in out.parent.glob(f"{glob.escape(STAGING_PREFIX)}*{LOCK_SUFFIX}"):
        try:
            fd = os.open(lock, os.O_RDWR)
        except OSError:
            continue  # removed meanwhile by its export or another cleaner
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # held: that export is running
        try:  # removed while holding the lock, so no new export can take this name meanwhile
            staged = lock.with_name(lock.name.removesuffix(LOCK_SUFFIX))
            shutil.rmtree(staged, ignore_errors=True)
            lock.unlink(missing_ok=True)
            removed.append(staged)
        finally:
            os.close(fd)
    return removed


def check_destination(out: Path) -> None:
    """Refuse to replace a directory that is not a gendeploy export (``--force`` or not)."""
    if out.exists() and not (out / MANIFEST_NAME).is_file():  # noqa: SIM102
        if not out.is_dir() or any(out.iterdir()):
            raise UsageError(f"{out} exists and is not a gendeploy export; choose another --out")


@contextmanager
def destination_lock(out: Path) -> Iterator[None]:
    """Held while ``out`` is replaced or repaired, so exports to one place publish in turn. The
    lock file beside ``out`` is removed by its holder; a waiter that then gets the lock of a
    removed file tries again (as ``_locked_file`` does)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    path = out.parent / f".gendeploy-publish-{out.name}{LOCK_SUFFIX}"
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            if os.stat(path).st_ino == os.fstat(fd).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # before the lock is let go: see above
        os.close(fd)


def set_aside(out: Path) -> Path:
    """Move the export at ``out`` into a new hidden directory beside it; returns that directory
    (the export is its ``previous``). The first of ``publish``'s two renames."""
    aside = Path(tempfile.mkdtemp(prefix=ASIDE_PREFIX, suffix=f".{out.name}", dir=out.parent))
    os.replace(out, aside / "previous")
    return aside


def _set_aside_dirs(out: Path) -> list[Path]:
    pattern = re.compile(rf"{re.escape(ASIDE_PREFIX)}[^.]+\.{re.escape(out.name)}")
    candidates = out.parent.glob(glob.escape(ASIDE_PREFIX) + "*") if out.parent.is_dir() else []
    return sorted(p for p in candidates if pattern.fullmatch(p.name))


def repair_interrupted(out: Path) -> str | None:
    """Finish what an export killed between its two renames left: put the earlier export back
    when nothing took its place, else delete the set-aside copy. Returns what was done."""
    if not _set_aside_dirs(out):
        return None
    with destination_lock(out):
        return _repair(out)


def _repair(out: Path) -> str | None:
    done = None
    for aside in _set_aside_dirs(out):
        previous = aside / "previous"
        if previous.is_dir() and not out.exists():
            os.replace(previous, out)
            done = f"restored {out}, which an interrupted --force export had set aside"
        elif done is None:
            done = f"removed the earlier export an interrupted --force export left ({aside})"
        shutil.rmtree(aside, ignore_errors=True)
    return done


def publish(staged: Path, out: Path, force: bool = False) -> None:
    """Move ``staged`` to ``out``, replacing an earlier export there only with ``force``.

    What is at ``out`` is checked again under the lock: something may have appeared there while
    the export ran (another export, or files of the user's). The earlier export is set aside and
    deleted only once the new one is in place; if the new one cannot be moved in and the earlier
    one cannot be put back, it is kept and its path named.
    """
    _fsync_tree(staged)
    with destination_lock(out):
        _repair(out)
        check_destination(out)
        if out.exists() and not force and any(out.iterdir()):
            raise UsageError(f"{out} appeared while this export ran: pass --force to replace it")
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()  # an empty directory (made by the user for it) takes no setting aside
        if not out.exists():
            os.replace(staged, out)
            return
        aside = set_aside(out)
        try:
            os.replace(staged, out)
        except BaseException as error:
            try:
                os.replace(aside / "previous", out)  # put the earlier export back
            except OSError as e:
                raise ExportError(
                    f"could not publish {out} ({error}) nor restore the earlier export ({e}); "
                    f"it is kept at {aside / 'previous'}"
                ) from None
            aside.rmdir()
            raise
        shutil.rmtree(aside, ignore_errors=True)  # the new export is in place: drop the old one


def _fsync_tree(root: Path) -> None:
    for path in root.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
