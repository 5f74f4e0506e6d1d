"""A user's model from ``--model file.py:factory`` (or ``package.module:factory``) with its
weights, and the digests that say whether it is still the same model (code and weights): shared by
the generators and the image-to-image models ``export`` loads (``source.py``, ``image_source.py``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import pickle
import re
import sys
import types
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gendeploy.errors import CheckpointError, ExportError, UsageError
from gendeploy.manifest import sha256_file
from gendeploy.trainer.checkpoint import FORMAT, load_state_into

# A factory that loads its own weights says so: ``make.gendeploy_loads_weights = True``.
LOADS_WEIGHTS = "gendeploy_loads_weights"


@dataclass(frozen=True)
class UserModule:
    """The module a ``--model`` spec builds (eval mode, weights loaded) and where it came from."""

    module: nn.Module
    spec: str  # as stored: the file resolved, or the importable module
    weights: str  # the weights file, resolved ("": the factory's own or random weights)
    sha256: str  # of the code files that define it and of every parameter and buffer
    default_name: str


def build_user_module(
    spec: str, weights: Path | str | None, random_weights: bool = False
) -> UserModule:
    """The user's module (eval mode, weights loaded).

    The weights come from ``weights``, from the factory itself when it is marked
    ``<factory>.gendeploy_loads_weights = True``, or, only when ``random_weights`` says so, from
    the factory's (seeded) random initialisation. The digest covers the code files that define
    the model and every parameter and buffer it holds, so a change to either is seen.
    """
    if weights is not None and random_weights:
        raise UsageError("--weights and --random-weights contradict each other: pick one")
    module, spec_path, attr, factory = _build_user_module(spec)
    loads_own = getattr(factory, LOADS_WEIGHTS, False) is True
    if random_weights and loads_own:
        raise UsageError(
            f"--random-weights: {spec} loads its own weights ({attr}.{LOADS_WEIGHTS} is True)"
        )
    if weights is None and not random_weights and not loads_own:
        raise UsageError(
            f"--model {spec}: no weights; pass --weights FILE (.safetensors or .pt), "
            f"--random-weights to export its untrained initialisation, or mark a factory that "
            f"loads its own weights with `{attr}.{LOADS_WEIGHTS} = True`"
        )
    weights_path = ""
    if weights is not None:
        weights_file = Path(weights).resolve()
        load_state_into(module, load_state_dict_file(weights_file), str(weights))
        weights_path = str(weights_file)
    module.eval()
    return UserModule(
        module=module,
        spec=f"{spec_path}:{attr}" if spec_path is not None else spec,
        weights=weights_path,
        sha256=model_digest(module, _code_files(module, factory, spec_path)),
        default_name=snake(Path(weights_path).stem if weights_path else attr),
    )


def state_digest(module: nn.Module) -> str:
    """sha256 over the module's parameters and buffers (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{list(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_digest(module: nn.Module, code_files: list[Path]) -> str:
    """sha256 of the code files that define ``module`` and of its ``state_digest``."""
    digest = hashlib.sha256()
    for path in sorted(set(code_files)):
        digest.update(b"file\0" + bytes.fromhex(sha256_file(path)))
    digest.update(bytes.fromhex(state_digest(module)))
    return digest.hexdigest()


def _code_files(module: nn.Module, factory: Any, spec_path: Path | None) -> list[Path]:
    """The files that define the model: the factory's and every submodule class's, torch's own
    excepted (a torch upgrade is not a new model)."""
    torch_dir = Path(torch.__file__).resolve().parent
    found = [spec_path] if spec_path is not None else []
    for obj in (factory, *(type(m) for m in module.modules())):
        try:
            name = inspect.getsourcefile(obj)
        except TypeError:  # built-in: no file
            continue
        path = Path(name).resolve() if name else None
        if path is not None and path.is_file() and not path.is_relative_to(torch_dir):
            found.append(path)
    return found


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


def _build_user_module(spec: str) -> tuple[nn.Module, Path | None, str, Any]:
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
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # random initialisations are reproducible (load_eager rebuilds)
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
    return module, spec_path, attr, factory


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


def snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("-", "_") or "model"


def module_digest(module: nn.Module) -> str:
    """What an in-memory export is "the same module" by: its weights and its code (an edited
    ``forward`` must not find the earlier export up to date)."""
    return hashlib.sha256(f"{state_digest(module)}:{code_digest(module)}".encode()).hexdigest()


def code_digest(module: nn.Module) -> str:
    """sha256 over the code of every class in ``module`` that is not torch's own (torch's version
    is recorded anyway), best effort: each class's source, or where Python cannot show it (a
    class typed into a notebook) its methods' byte code; plus the whole file each class comes
    from, which holds the helper functions its ``forward`` calls."""
    digest = hashlib.sha256()
    files: set[str] = set()
    classes = {type(m) for m in module.modules()}
    for cls in sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        if cls.__module__.split(".")[0] == "torch":
            continue
        digest.update(f"{cls.__module__}.{cls.__qualname__}:".encode())
        try:
            digest.update(inspect.getsource(cls).encode())
        except (OSError, TypeError):
            for name, attr in sorted(vars(cls).items()):
                code = getattr(getattr(attr, "__func__", attr), "__code__", None)
                if isinstance(code, types.CodeType):
                    digest.update(name.encode() + _code_bytes(code))
        with contextlib.suppress(OSError, TypeError):
            path = inspect.getsourcefile(cls)
            if path and Path(path).is_file():
                files.add(path)
    for path in sorted(files):
        with contextlib.suppress(OSError):
            digest.update(Path(path).read_bytes())
    return digest.hexdigest()


def _code_bytes(code: types.CodeType) -> bytes:
    """A function's byte code, names and constants (not its file name or line numbers, which a
    notebook changes on every run of the same cell)."""
    parts = [code.co_code, repr(code.co_names).encode()]
    for const in code.co_consts:
        parts.append(
            _code_bytes(const) if isinstance(const, types.CodeType) else repr(const).encode()
        )
    return b"".join(parts)
