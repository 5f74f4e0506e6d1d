"""What a server serves, pinned: a private model repository that tritonserver reads instead of
the user's.

For each served model it holds the config as it was loaded and the files of the one version
being served (hard links into the user's repository, copies across file systems). Whatever
`gendeploy repo` writes afterwards changes nothing here until ``serve --watch`` loads it, and a
version that fails to load is never pinned, so a tritonserver restarted after a crash serves
exactly what its predecessor served: not a version written since, not a broken one. The
directory lives in the per-user runtime directory (0700); one left by a killed serve process is
removed by the next server.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gendeploy.serve.admin import runtime_dir
from gendeploy.serve.readyfile import pid_alive


@dataclass(frozen=True)
class Pin:
    """What one model served: its config text and its version directory name."""

    config: str
    version: str


def _latest_version(model_dir: Path) -> str | None:
    versions = [p for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()]
    return max(versions, key=lambda p: int(p.name)).name if versions else None


def _link_tree(source: Path, dest: Path) -> None:
    """``dest`` as a copy of ``source`` made of hard links (a version directory is never
    modified in place: `gendeploy repo` stages a new one), copies where links cannot be made."""

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, dest, copy_function=link, ignore=shutil.ignore_patterns("__pycache__"))


class PinnedRepository:
    """A private repository under the runtime directory, tied to this process."""

    def __init__(self, repo_dir: Path) -> None:
        self.repo_dir = repo_dir
        parent = runtime_dir() / "served"
        parent.mkdir(mode=0o700, exist_ok=True)
        remove_stale(parent)
        self.root = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=parent))
        self.pins: dict[str, Pin] = {}

    def models(self) -> list[str]:
        return sorted(self.pins)

    def pin(self, model: str) -> Pin | None:
        """Pin ``model``'s config and latest version as the user's repository has them now;
        returns what was pinned before (for ``restore``)."""
        source = self.repo_dir / model
        version = _latest_version(source)
        if version is None:
            raise FileNotFoundError(f"{source} has no version directory")
        previous = self.pins.get(model)
        dest = self.root / model
        dest.mkdir(exist_ok=True)
        if previous is None or previous.version != version:
            shutil.rmtree(dest / version, ignore_errors=True)
            _link_tree(source / version, dest / version)
        config = (source / "config.pbtxt").read_text()
        (dest / "config.pbtxt").write_text(config)
        self.pins[model] = Pin(config, version)
        if previous is not None and previous.version != version:
            self._hide(model, previous.version)
        return previous

    def _hide(self, model: str, version: str) -> None:
        """Move a version out of Triton's sight (it serves the highest version present)."""
        hidden = self.root / model / f".{version}"
        shutil.rmtree(hidden, ignore_errors=True)
        with contextlib.suppress(FileNotFoundError):
            os.rename(self.root / model / version, hidden)

    def confirm(self, model: str) -> None:
        """The pinned version loaded: drop the versions it replaced."""
        for hidden in (self.root / model).glob(".*"):
            shutil.rmtree(hidden, ignore_errors=True)

    def restore(self, model: str, previous: Pin | None) -> None:
        """Undo ``pin`` after the new version failed to load."""
        dest = self.root / model
        current = self.pins.pop(model, None)
        if previous is None:
            shutil.rmtree(dest, ignore_errors=True)
            return
        if current is not None and current.version != previous.version:
            shutil.rmtree(dest / current.version, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.rename(dest / f".{previous.version}", dest / previous.version)
        (dest / "config.pbtxt").write_text(previous.config)
        self.pins[model] = previous

    def remove(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def remove_stale(parent: Path) -> list[Path]:
    """Delete pinned repositories whose process is gone (a killed serve)."""
    removed = []
    for path in parent.iterdir():
        pid = path.name.split("-", 1)[0]
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
