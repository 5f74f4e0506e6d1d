"""Where the eager generator comes from: a trainer checkpoint or any user ``nn.Module``.

Both paths end in a ``LoadedModel``: the module in eval mode plus the facts export needs (latent
size, classes, image shape) and a ``Source`` record that lets ``load_eager`` rebuild the very same
module later from the manifest alone (bench's eager row, serving's reference).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import pickle
import re
import sys
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gendeploy.errors import CheckpointError, ExportError, UsageError
from gendeploy.export.manifest import Interface, Manifest, Source, sha256_file
from gendeploy.trainer.checkpoint import FORMAT, load_generator, load_state_into

CHECKPOINT_NAMES = ("checkpoint.pt", "checkpoint_final.pt", "last.pt")


@dataclass
class LoadedModel:
    module: nn.Module
    latent_dim: int
    num_classes: int
    image_shape: tuple[int, int, int]
    source: Source
    default_name: str
    interface: Interface = field(default_factory=Interface)  # served inputs beyond z, labels

    @property
    def conditional(self) -> bool:
        return self.num_classes > 0


def resolve_checkpoint(path: Path | str) -> Path:
    """A checkpoint file, or a run directory holding one."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_NAMES:
            if (path / name).is_file():
                return path / name
        found = sorted(path.glob("*.pt"))
        if len(found) == 1:
            return found[0]
        raise CheckpointError(f"no checkpoint in {path}: expected {CHECKPOINT_NAMES[0]}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path} (pass runs/<name>/checkpoint.pt)")
    return path


def load_checkpoint_model(path: Path | str) -> LoadedModel:
    ckpt_path = resolve_checkpoint(path).resolve()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's pickle-protocol note on files it then refuses
        module, ckpt = load_generator(ckpt_path)
    cfg = ckpt.model_config
    run_dir = ckpt_path.parent.name
    return LoadedModel(
        module=module,
        latent_dim=cfg.latent_dim,
        num_classes=cfg.num_classes,
        image_shape=cfg.image_shape,
        source=Source(
            kind="checkpoint",
            path=str(ckpt_path),
            sha256=sha256_file(ckpt_path),
            model_config=cfg.to_dict(),
            dataset=str(ckpt.train_config.get("dataset", "")),
        ),
        default_name=run_dir or ckpt_path.stem,
    )


def load_user_model(
    spec: str,
    weights: Path | str | None,
    latent_dim: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    forward_kwargs: dict[str, Any] | None = None,
    noise: str = "const",
    log: Callable[[str], None] | None = None,
) -> LoadedModel:
    """``file.py:Class`` or ``package.module:factory``, called without arguments, plus weights;
    probed for its served interface like any module given to ``export_generator``."""
    from gendeploy.export.inmemory import load_module

    module, source, default_name = build_user_model(
        spec, weights, latent_dim, num_classes, image_shape
    )
    return load_module(
        module,
        latent_dim,
        num_classes,
        image_shape,
        forward_kwargs=forward_kwargs,
        noise=noise,
        source=source,
        default_name=default_name,
        label=f"--model {spec}",
        log=log,
    )


def build_user_model(
    spec: str,
    weights: Path | str | None,
    latent_dim: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
) -> tuple[nn.Module, Source, str]:
    """The user's module (eval mode, weights loaded), its ``Source`` and a default export name."""
    module, spec_path, attr = _build_user_module(spec)
    digest = hashlib.sha256()
    if spec_path is not None:
        digest.update(bytes.fromhex(sha256_file(spec_path)))
    weights_path = ""
    if weights is not None:
        weights_file = Path(weights).resolve()
        load_state_into(module, load_state_dict_file(weights_file), str(weights))
        digest.update(bytes.fromhex(sha256_file(weights_file)))
        weights_path = str(weights_file)
    module.eval()
    stored_spec = f"{spec_path}:{attr}" if spec_path is not None else spec
    source = Source(
        kind="user_model",
        path=stored_spec,
        sha256=digest.hexdigest(),
        weights=weights_path,
        model_config={
            "latent_dim": latent_dim,
            "num_classes": num_classes,
            "image_shape": list(image_shape),
        },
    )
    return module, source, _snake(Path(weights_path).stem if weights_path else attr)


def load_eager(manifest: Manifest) -> nn.Module:
    """Rebuild the exact eager generator an export was made from (eval mode, CPU)."""
    src = manifest.source
    if src.kind == "checkpoint":
        if not Path(src.path).is_file():
            raise ExportError(f"the checkpoint of export {manifest.name!r} is gone: {src.path}")
        if sha256_file(src.path) != src.sha256:
            raise ExportError(
                f"{src.path} changed since export {manifest.name!r}; re-export with --force"
            )
        return load_generator(src.path)[0]
    if src.kind == "user_model":
        from gendeploy.export.signature import serving_module

        shape = manifest.image_shape
        module, source, _ = build_user_model(
            src.path,
            src.weights or None,
            manifest.latent_dim,
            manifest.num_classes,
            (shape[0], shape[1], shape[2]),
        )
        if source.sha256 != src.sha256:
            raise ExportError(
                f"the model file or weights of export {manifest.name!r} changed since export; "
                "re-export with --force"
            )
        return serving_module(module, manifest.interface, manifest.num_classes)
    if src.kind == "in_memory":
        raise ExportError(
            f"export {manifest.name!r} was made from a module in memory ({src.path}); rebuild it "
            "yourself, or export with --model FILE.py:Class to make it loadable"
        )
    raise ExportError(f"export {manifest.name!r} has an unknown source kind {src.kind!r}")


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a ``.pt`` read with ``weights_only=True``."""
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pickle-protocol notes for files we then refuse
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, zipfile.BadZipFile, RuntimeError, EOFError, ValueError) as e:
        found = re.search(r"GLOBAL ([\w.]+) was not an allowed", str(e))
        what = f"it pickles {found.group(1)}" if found else "not a torch-saved file of tensors"
        raise CheckpointError(
            f"{path} is not a plain state dict (refused to unpickle it safely: {what}); "
            "save weights with torch.save(model.state_dict()) or safetensors"
        ) from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        payload = payload.get("generator_ema") or payload["generator"]
    elif isinstance(payload, dict) and isinstance(payload.get("state_dict"), dict):
        payload = payload["state_dict"]
    if not isinstance(payload, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in payload.items()
    ):
        raise CheckpointError(f"{path} does not hold a state dict (name -> tensor)")
    return payload


def _build_user_module(spec: str) -> tuple[nn.Module, Path | None, str]:
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr.isidentifier():
        raise UsageError(
            f"--model {spec!r}: expected path/to/file.py:ClassName or package.module:factory"
        )
    spec_path: Path | None = None
    if target.endswith(".py") or "/" in target or "\\" in target:
        spec_path = Path(target).resolve()
        if not spec_path.is_file():
            raise UsageError(f"--model: model file not found: {target}")
        py_module = _import_file(spec_path)
    else:
        try:
            py_module = importlib.import_module(target)
        except ImportError as e:
            raise UsageError(f"--model: cannot import module {target!r} ({e})") from None
    factory = getattr(py_module, attr, None)
    if factory is None:
        found = [
            n
            for n, v in vars(py_module).items()
            if inspect.isclass(v)
            and issubclass(v, nn.Module)
            and v.__module__ == py_module.__name__
        ]
        raise UsageError(f"--model: {target} has no {attr!r}; nn.Module classes there: {found}")
    if not callable(factory):
        raise UsageError(f"--model: {target}:{attr} is not a class or factory function")
    try:
        module = factory()
    except Exception as e:
        raise ExportError(
            f"--model: {target}:{attr}() failed ({type(e).__name__}: {e}); it must build the "
            "generator without arguments"
        ) from None
    if not isinstance(module, nn.Module):
        raise UsageError(
            f"--model: {target}:{attr}() returned {type(module).__name__}, not nn.Module"
        )
    return module, spec_path, attr


def _import_file(path: Path) -> Any:
    name = f"gendeploy_user_{hashlib.sha256(str(path).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"--model: cannot import {path} as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look classes up here
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise ExportError(f"--model: importing {path} failed ({type(e).__name__}: {e})") from None
    return module


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("-", "_") or "model"
