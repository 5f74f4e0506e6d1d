"""``export()``: a checkpoint or user generator -> gated ONNX/TensorRT files + ``manifest.json``.

Steps: check flags (before any heavy work), load the eager model, compute eager references on the
gate's fixed inputs, export FP32 ONNX, derive the uint8 / FP16 variants, build TensorRT engines
where possible, gate every artifact, write the manifest, publish atomically.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import platform
import re
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from gendeploy import __version__
from gendeploy.errors import MissingDependencyError, UsageError
from gendeploy.export.build import build_artifacts
from gendeploy.export.int8 import require_int8_tools
from gendeploy.export.options import ExportOptions, ModelSpec
from gendeploy.export.publish import (
    check_destination,
    publish,
    repair_interrupted,
    signals_raise,
    staging_dir,
)
from gendeploy.export.source import LoadedModel, load_spec
from gendeploy.manifest import (
    MANIFEST_NAME,
    ArtifactKind,
    BatchProfile,
    Interface,
    Manifest,
    OutputKind,
    load_manifest,
    sha256_file,
)
from gendeploy.runtime.tensorrt import tensorrt_availability

Log = Callable[[str], None]
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")  # also a valid Triton model name


def export(
    spec: ModelSpec,
    options: ExportOptions | None = None,
    name: str | None = None,
    out: Path | str | None = None,
    force: bool = False,
    command: str | None = None,
    log: Log | None = None,
) -> Manifest:
    """Export, gate and publish; returns the manifest (the existing one if already up to date).

    The one entry point: the CLI (a checkpoint or ``--model``), the bench and
    ``export_generator`` (a module in memory) all call it. Flags are checked before the model is
    loaded; a ``--model`` generator is built from its file and weights, then probed and exported
    like a module held in memory.
    """
    with signals_raise():  # SIGTERM or SIGHUP: the staging directory and its lock go too
        return _export(spec, options or ExportOptions(), name, out, force, command, log)


def _export(
    spec: ModelSpec,
    options: ExportOptions,
    name: str | None,
    out: Path | str | None,
    force: bool,
    command: str | None,
    log: Log | None,
) -> Manifest:
    say = log or (lambda _msg: None)
    if name is not None and not _NAME.match(name):
        raise UsageError(f"--name {name!r}: use letters, digits, '_', '.', '-'")
    if options.int8:
        require_int8_tools()
    engine_status = _engine_status(options)

    started = time.perf_counter()
    loaded = load_spec(spec, say)
    if loaded.image is not None and options.output is OutputKind.uint8:
        raise UsageError(
            "--output uint8: an image-to-image export serves float images, which its python "
            "model tiles and renders to uint8 itself; drop --output uint8"
        )
    name = name or _safe_name(loaded.default_name)
    out_dir = Path(out) if out is not None else Path("exports") / name
    repaired = repair_interrupted(out_dir)
    if repaired:
        say(repaired)
    check_destination(out_dir)
    fingerprint = _fingerprint(loaded, options, name)
    if (out_dir / MANIFEST_NAME).is_file() and not force:
        existing = load_manifest(out_dir)
        if existing.fingerprint == fingerprint:
            say(f"up to date: {out_dir} (same source and options; --force rebuilds it)")
            return existing
        raise UsageError(
            f"{out_dir} holds another export (other source or options); --force replaces it"
        )

    timings: dict[str, float] = {"load": time.perf_counter() - started}
    with staging_dir(out_dir) as staged:
        built = build_artifacts(loaded, options, staged, engine_status, timings, say)
        manifest = Manifest(
            name=name,
            source=loaded.source,
            latent_dim=loaded.latent_dim,
            num_classes=loaded.num_classes,
            image_shape=list(loaded.image_shape),
            batch=BatchProfile(min=1, opt=options.opt_batch, max=options.max_batch),
            opset=built.artifacts[0].extra.get("opset", 0),
            artifacts=built.artifacts,
            skipped=built.skipped,
            versions={**_versions(), **built.versions},
            command=command if command is not None else shlex.join(sys.argv),
            created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            options=_options_dict(options),
            fingerprint=fingerprint,
            timings={k: round(v, 3) for k, v in timings.items()},
            interface=loaded.interface,
            image=built.image,
        )
        for artifact in manifest.artifacts:
            artifact.sha256 = sha256_file(staged / artifact.path)
            if artifact.kind is ArtifactKind.openvino:  # the IR's weights file
                artifact.extra["bin_sha256"] = sha256_file(staged / artifact.files()[1])
        manifest.timings["total"] = round(time.perf_counter() - started, 3)
        (staged / MANIFEST_NAME).write_text(manifest.to_json())
        publish(staged, out_dir, force=force)
    refused = ", ".join(s["name"] for s in manifest.refused)
    shown = f"; refused {refused} (manifest.skipped says why)" if refused else ""
    say(f"published {out_dir}: {', '.join(a.name for a in manifest.artifacts)}{shown}")
    return manifest


def _engine_status(options: ExportOptions) -> str:
    """'' when a TensorRT engine can be built, else why not; fails now under --require-engine."""
    if not (options.fp16 or options.int8):
        return "not requested (needs --fp16 or --int8)"
    status = tensorrt_availability()
    if not status.ok and options.require_engine:
        raise MissingDependencyError(
            f"--require-engine: cannot build a TensorRT engine here ({status.reason})"
        )
    return "" if status.ok else status.reason


def _fingerprint(loaded: LoadedModel, options: ExportOptions, name: str) -> str:
    key = {
        "source": asdict(loaded.source),
        "options": _options_dict(options),
        "name": name,
        "gendeploy": __version__,
    }
    if loaded.interface != Interface():  # absent for plain models: their fingerprints stay
        interface = asdict(loaded.interface)
        if not interface["truncation_convention"]:  # absent before it: fingerprints stay
            del interface["truncation_convention"]
        key["interface"] = interface
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def _options_dict(options: ExportOptions) -> dict[str, Any]:
    d = asdict(options)
    d["output"] = options.output.value
    if options.int8_fallback:  # the defaults: absent, so fingerprints from before them stay
        del d["int8_fallback"]
    if not options.strict:
        del d["strict"]
    if options.quality_seeds is None:
        del d["quality_seeds"]
    if not options.tile:  # image models' tile: absent at its defaults (fingerprints stay)
        del d["tile"]
    if options.tile_margin is None:
        del d["tile_margin"]
    return d


def _safe_name(raw: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", raw).lstrip(".-") or "model"
    return name


def _versions() -> dict[str, str]:
    found = {"gendeploy": __version__, "python": platform.python_version()}
    for dist in ("torch", "onnx", "onnxruntime", "onnxconverter-common", "nncf", "openvino"):
        with contextlib.suppress(PackageNotFoundError):
            found[dist] = version(dist)
    return found
