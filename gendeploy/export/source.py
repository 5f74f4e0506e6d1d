"""Where the eager generator comes from: a trainer checkpoint or any user ``nn.Module``.

Both paths end in a ``LoadedModel``: the module in eval mode plus the facts export needs (latent
size, classes, image shape) and a ``Source`` record that lets ``load_eager`` rebuild the very same
module later from the manifest alone (bench's eager row, serving's reference).
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gendeploy.errors import CheckpointError, ExportError, UsageError
from gendeploy.export.options import ModelSpec
from gendeploy.export.signature import inspect_generator, serving_module
from gendeploy.manifest import (
    Artifact,
    Interface,
    Manifest,
    NoiseMode,
    OutputKind,
    Source,
    TensorSpec,
    Variant,
    sha256_file,
)
from gendeploy.trainer.checkpoint import FORMAT, load_generator, load_state_into

CHECKPOINT_NAMES = ("checkpoint.pt", "checkpoint_final.pt", "last.pt")
# A factory that loads its own weights says so: ``make.gendeploy_loads_weights = True``.
LOADS_WEIGHTS = "gendeploy_loads_weights"


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


def load_spec(spec: ModelSpec, log: Callable[[str], None] | None = None) -> LoadedModel:
    """The generator ``spec`` names, loaded and probed for export: a checkpoint as it was
    trained; a ``--model`` file or a module in memory probed for its served interface."""
    if spec.checkpoint is not None:
        return load_checkpoint_model(spec.checkpoint)
    latent_dim, image_shape = spec.latent_dim, spec.image_shape
    assert latent_dim is not None and image_shape is not None  # ModelSpec checked them
    num_classes = spec.num_classes or 0
    label = None
    if spec.module is not None:
        if not isinstance(spec.module, nn.Module):
            raise UsageError(
                f"export_generator needs an nn.Module, got {type(spec.module).__name__}"
            )
        module, source, default_name = spec.module, spec.source, None
    else:
        assert spec.model is not None
        module, source, default_name = build_user_model(
            spec.model, spec.weights, latent_dim, num_classes, image_shape, spec.random_weights
        )
        label = f"--model {spec.model}"
    return load_module(
        module,
        latent_dim,
        num_classes,
        image_shape,
        forward_kwargs=spec.forward_kwargs,
        noise=spec.noise,
        source=source,
        default_name=default_name,
        label=label,
        log=log,
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
    random_weights: bool = False,
) -> LoadedModel:
    """``file.py:Class`` or ``package.module:factory``, called without arguments, plus weights;
    probed for its served interface like any module given to ``export_generator``."""
    model = ModelSpec(
        model=spec,
        weights=Path(weights) if weights is not None else None,
        latent_dim=latent_dim,
        num_classes=num_classes,
        image_shape=image_shape,
        forward_kwargs=forward_kwargs,
        noise=noise,
        random_weights=random_weights,
    )
    return load_spec(model, log)


def build_user_model(
    spec: str,
    weights: Path | str | None,
    latent_dim: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    random_weights: bool = False,
) -> tuple[nn.Module, Source, str]:
    """The user's module (eval mode, weights loaded), its ``Source`` and a default export name.

    The weights come from ``weights``, from the factory itself when it is marked
    ``<factory>.gendeploy_loads_weights = True``, or, only when ``random_weights`` says so, from
    the factory's (seeded) random initialisation. The source fingerprint covers the code files that
    define the model and every parameter and buffer it holds, so a change to either is seen.
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
    stored_spec = f"{spec_path}:{attr}" if spec_path is not None else spec
    source = Source(
        kind="user_model",
        path=stored_spec,
        sha256=model_digest(module, _code_files(module, factory, spec_path)),
        weights=weights_path,
        model_config={
            "latent_dim": latent_dim,
            "num_classes": num_classes,
            "image_shape": list(image_shape),
        },
        random_weights=random_weights,
    )
    return module, source, _snake(Path(weights_path).stem if weights_path else attr)


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
        shape = manifest.image_shape
        module, source, _ = build_user_model(
            src.path,
            src.weights or None,
            manifest.latent_dim,
            manifest.num_classes,
            (shape[0], shape[1], shape[2]),
            random_weights=src.random_weights,
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


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower().replace("-", "_") or "model"


_RECORDABLE = (bool, int, float, str, type(None))  # what the manifest's JSON can hold


def load_module(
    module: nn.Module,
    latent_dim: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    forward_kwargs: dict[str, Any] | None = None,
    noise: str = "const",
    source: Source | None = None,
    default_name: str | None = None,
    label: str | None = None,
    log: Callable[[str], None] | None = None,
) -> LoadedModel:
    """Probe ``module`` (eval mode) and describe it for export."""
    if latent_dim < 1 or num_classes < 0 or len(image_shape) != 3 or min(image_shape) < 1:
        raise UsageError("latent_dim and image_shape (C, H, W) must be positive, num_classes >= 0")
    if noise not in {m.value for m in NoiseMode}:
        raise UsageError(f"--noise must be const or seeded, got {noise!r}")
    kwargs = dict(forward_kwargs or {})
    for key, value in kwargs.items():
        if not isinstance(value, _RECORDABLE):
            raise UsageError(
                f"forward_kwargs[{key!r}] is a {type(value).__name__}; the manifest records only "
                "numbers, booleans, strings and None"
            )
    module.eval()
    cls = type(module)
    interface = inspect_generator(
        module,
        latent_dim,
        num_classes,
        image_shape,
        forward_kwargs=kwargs,
        noise=NoiseMode(noise),
        label=label or _label(source, cls),
        log=log,
    )
    if source is None:
        source = Source(
            kind="in_memory",
            path=f"{cls.__module__}:{cls.__qualname__}",
            sha256=module_digest(module),
            model_config={
                "latent_dim": latent_dim,
                "num_classes": num_classes,
                "image_shape": list(image_shape),
            },
        )
    return LoadedModel(
        module=serving_module(module, interface, num_classes),
        latent_dim=latent_dim,
        num_classes=num_classes,
        image_shape=(image_shape[0], image_shape[1], image_shape[2]),
        source=source,
        default_name=default_name or _snake(cls.__name__),
        interface=interface,
    )


def _label(source: Source | None, cls: type) -> str:
    """How messages name the model: ``--model file.py:Class`` when it came from the CLI."""
    if source is not None and source.kind == "user_model":
        return f"--model {source.path}"
    return cls.__name__


def output_spec(image_shape: tuple[int, int, int], uint8: bool) -> TensorSpec:
    c, h, w = image_shape
    if uint8:
        return TensorSpec("images", "uint8", [-1, h, w, c], layout="NHWC", value_range=[0, 255])
    return TensorSpec("images", "float32", [-1, c, h, w], layout="NCHW", value_range=[-1, 1])


def make_artifact(loaded: LoadedModel, variant: Variant, path: str | None = None) -> Artifact:
    """The artifact of ``variant`` for this model (at ``path``, default the variant's file)."""
    return Artifact(
        name=variant.name,
        kind=variant.kind,
        path=path or variant.file,
        precision=variant.precision,
        inputs=loaded.interface.input_specs(loaded.latent_dim, loaded.num_classes),
        output=output_spec(loaded.image_shape, uint8=variant.head is OutputKind.uint8),
    )


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
