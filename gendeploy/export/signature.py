"""The served signature of a user generator: what its ``forward`` takes besides z, found by probing.

Every export serves one calling convention, ``(z[, labels][, truncation][, noise_0, ...])``;
``ServedGenerator`` maps it onto the model's own ``forward``:

- class input: integer ``labels`` passed as they are, or turned into the one-hot vector ``c`` a
  StyleGAN-style model takes (inside the graph, so clients always send integer labels); an
  unconditional model whose ``forward(z, c)`` still wants ``c`` gets an empty ``[N, 0]`` one.
- truncation: a ``forward`` parameter named ``truncation_psi`` / ``truncation`` / ``psi`` with a
  numeric default becomes the per-sample input ``truncation`` ``[N, 1]`` (requests may omit it: the
  server fills the model's default), unless ``--forward-kwargs`` fixes it. Requests may send psi
  within ``TRUNCATION_RANGE`` (widened to take the default), recorded in the manifest: the gate
  runs every artifact at both ends, and the server refuses psi outside.
- noise (``--noise seeded``): buffers named ``*noise*`` become per-sample inputs, which the server
  draws from each request's seed (``backend_model.draw_noise``); by default they stay constants,
  as the model computes them in eager mode.
- ``--forward-kwargs``: keyword arguments given to every call (noise mode, fused paths...).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import replace
from enum import Enum
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from gendeploy.errors import NondeterministicModelError, UsageError
from gendeploy.manifest import Interface, NoiseInput, NoiseMode

TRUNCATION_ARGS = ("truncation_psi", "truncation", "psi")
# The psi a served request may send: 0 (the average image) to 1 (no truncation) and beyond on both
# sides for those who extrapolate. The gate checks every artifact at both ends, so an FP16 one is
# known finite there; outside, nothing is known, so the server refuses it.
TRUNCATION_RANGE = (-1.0, 2.0)
WRAPPED = "generator"  # ServedGenerator's attribute holding the model
SHAPE_PROBE_BATCH = 2  # the first call: does it run, what shape does it return
PROBE_BATCH = 3  # odd, so a per-sample input that broadcasts wrongly cannot pass for a size of 2
DETERMINISM_ATOL = 1e-6  # the same input twice: eager CPU kernels repeat bit for bit
# Keyword arguments the authors' code takes to draw the same image for the same input, alone or
# in any batch: tried in this order when a probe finds the model does not (``remedies``), so the
# first error names every option the model needs at once
REMEDIES: tuple[tuple[str, Any], ...] = (
    ("noise_mode", "const"),  # NVlabs: the noise_const buffers instead of torch.randn
    ("randomize_noise", False),  # rosinality: its noise buffers instead of torch.randn
    ("force_fp32", True),  # NVlabs: FP16 blocks in FP32 (eager FP16 on a CPU mixes the batch)
)
DIAGNOSIS_BATCH = 8  # the gate's samples per seed: a batch where FP16 blocks show their mixing
BATCH_ATOL = 1e-4  # a sample alone and in the batch (the gate's FP32 tolerance)
# ATen ops that draw random numbers (in place ones end in "_"): seen even when multiplied by 0
RANDOM_ATEN = frozenset(
    {"rand", "rand_like", "randn", "randn_like", "randint", "randint_like", "randperm"}
    | {"normal", "uniform", "bernoulli", "multinomial", "exponential", "poisson", "dropout"}
)
_KWARG = re.compile(r"^([A-Za-z_]\w*)=(.*)$")


class Convention(str, Enum):
    """How a per-sample psi reaches the model (``Interface.truncation_convention``). Authors' code
    branches on psi in Python (NVlabs: ``if truncation_psi != 1``, rosinality: ``if truncation
    < 1``), so a tensor cannot go through ``forward``: truncation is then done by the served
    module itself, the way the authors' own mapping does it, and accepted only once proven equal
    to ``forward`` with a float psi at every one of ``PROOF_PSI`` (``_proven``)."""

    forward = ""  # forward(..., truncation=<[N, 1] tensor>)
    nvlabs = "nvlabs"  # G.mapping(z, c); ws[:, :cutoff] toward mapping.w_avg; G.synthesis(ws)
    rosinality = "rosinality"  # w = G.style(z) toward mean_latent; G([w], input_is_latent=True)


PROOF_PSI = (0.5, 0.7, 1.0, 1.5)
PROOF_ATOL = 1e-5
MEAN_LATENT_SAMPLES = 4096  # rosinality's generate.py: g_ema.mean_latent(4096)
MEAN_LATENT_SEED = 0
# forward keywords the conventions consume themselves (the rest go to the synthesis call)
_NVLABS_OWN = ("truncation_psi", "truncation_cutoff")


class ClassInput(str, Enum):
    labels = "labels"  # forward(z, labels): int64 labels
    onehot = "onehot"  # forward(z, c): a float one-hot [N, num_classes] built from labels
    empty = "empty"  # unconditional forward(z, c): an empty [N, 0] c


def parse_forward_kwargs(text: str | None) -> dict[str, Any]:
    """``name=value,...``: true/false, none, ints, floats, else strings."""
    if not text:
        return {}
    found: dict[str, Any] = {}
    for item in text.split(","):
        match = _KWARG.match(item.strip())
        if match is None:
            raise UsageError(f"--forward-kwargs: expected name=value[,name=value...], got {item!r}")
        name, raw = match.groups()
        if name in found:
            raise UsageError(f"--forward-kwargs: {name!r} given twice")
        found[name] = _parse_value(raw.strip())
    return found


def _parse_value(raw: str) -> Any:
    low = raw.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            pass
    return raw


class ServedGenerator(nn.Module):
    """``forward(z[, labels][, truncation][, noise...])``: trailing inputs may be left out (the
    model's default truncation, its constant noise), so ``wrapper(z)`` is the model as given."""

    def __init__(self, generator: nn.Module, interface: Interface, num_classes: int) -> None:
        super().__init__()
        self.generator = generator  # named WRAPPED
        self.interface = interface
        self.num_classes = num_classes
        self.input_names = [s.name for s in interface.input_specs(0, num_classes)]
        self.convention = Convention(interface.truncation_convention)
        if self.convention is Convention.rosinality:
            self.register_buffer("mean_latent", mean_latent(generator), persistent=False)

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        values = dict(zip(self.input_names, inputs, strict=False))
        args = self.model_args(values)
        kwargs = dict(self.interface.forward_kwargs)
        psi = values.get("truncation") if self.interface.truncation_arg else None
        noise = {n.buffer: values[n.name] for n in self.interface.noise if n.name in values}
        if self.convention is not Convention.forward:
            with torch.nn.utils.stateless._reparametrize_module(self.generator, noise):
                return self._by_convention(args, kwargs, psi)
        if psi is not None:
            kwargs[self.interface.truncation_arg] = psi
        if noise:
            # the buffers swapped for this call only: the per-sample tensors broadcast like them
            return torch.func.functional_call(self.generator, noise, tuple(args), kwargs)
        out: torch.Tensor = self.generator(*args, **kwargs)
        return out

    def model_args(self, values: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """The model's positional arguments for the served inputs: z[, labels or c]."""
        z = values["z"]
        kind = ClassInput(self.interface.class_input)
        if kind is ClassInput.labels and self.num_classes > 0:
            return [z, values["labels"]]
        if kind is ClassInput.onehot:
            classes = torch.arange(self.num_classes, device=z.device)
            return [z, (values["labels"].reshape(-1, 1) == classes).to(z.dtype)]
        if kind is ClassInput.empty:
            return [z, z.new_zeros(z.shape[0], 0)]
        return [z]

    def _by_convention(
        self, args: list[torch.Tensor], kwargs: dict[str, Any], psi: torch.Tensor | None
    ) -> torch.Tensor:
        """Truncation outside the model's Python branch, as its authors' mapping does it, with
        a per-sample psi ([N, 1]; None: the model's default)."""
        g: Any = self.generator  # the authors' submodules and methods, by name
        z = args[0]
        if psi is None:  # fixed: by --forward-kwargs, else the model's default
            own = "truncation_psi" if self.convention is Convention.nvlabs else "truncation"
            fixed = kwargs.get(own, self.interface.truncation_default)
            psi = z.new_full((z.shape[0], 1), float(fixed))
        if self.convention is Convention.nvlabs:
            cutoff = kwargs.get("truncation_cutoff")
            rest = {k: v for k, v in kwargs.items() if k not in _NVLABS_OWN}
            ws = g.mapping(*args)  # psi 1: the model's own branch is not taken
            w_avg = g.mapping.w_avg
            moved = w_avg + psi.reshape(-1, 1, 1) * (ws - w_avg)
            if cutoff is not None:
                layers = torch.arange(ws.shape[1], device=ws.device).reshape(1, -1, 1)
                moved = torch.where(layers < cutoff, moved, ws)
            out: torch.Tensor = g.synthesis(moved, **rest)
            return out
        latent: torch.Tensor = self.get_buffer("mean_latent")
        w = g.style(z)
        w = latent + psi.clamp(max=1.0) * (w - latent)  # rosinality truncates below 1 only
        rest = {k: v for k, v in kwargs.items() if k not in ("truncation", "truncation_latent")}
        image: torch.Tensor = g([w], input_is_latent=True, **rest)[0]
        return image


def mean_latent(generator: nn.Module) -> torch.Tensor:
    """rosinality's truncation latent, ``G.mean_latent(4096)``, drawn once under a fixed seed (its
    scripts draw it anew on every run) so every export of the same weights serves the same one."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(MEAN_LATENT_SEED)
        draw: Any = generator.mean_latent
        latent: torch.Tensor = draw(MEAN_LATENT_SAMPLES)
    return latent.detach().clone()


def detect_convention(generator: nn.Module) -> Convention:
    """The authors' convention ``generator`` is built after, by its structure (names only)."""
    params = set(inspect.signature(generator.forward).parameters)
    if (
        {"styles", "truncation", "truncation_latent", "input_is_latent"} <= params
        and isinstance(getattr(generator, "style", None), nn.Module)
        and callable(getattr(generator, "mean_latent", None))
    ):
        return Convention.rosinality
    mapping = getattr(generator, "mapping", None)
    if (
        "truncation_psi" in params
        and isinstance(mapping, nn.Module)
        and isinstance(getattr(generator, "synthesis", None), nn.Module)
        and isinstance(getattr(mapping, "w_avg", None), torch.Tensor)
    ):
        return Convention.nvlabs
    return Convention.forward


def _own_call(
    generator: nn.Module, args: list[torch.Tensor], kwargs: dict[str, Any], name: str, psi: float,
    convention: Convention, latent: torch.Tensor | None,
) -> torch.Tensor:  # fmt: skip
    """The model's own call with a float psi, as its authors' scripts make it."""
    if convention is Convention.rosinality:
        out = generator([args[0]], **kwargs, truncation=psi, truncation_latent=latent)[0]
    else:
        out = generator(*args, **{**kwargs, name: psi})
    assert isinstance(out, torch.Tensor)
    return out


def _proven(
    generator: nn.Module,
    trial: Interface,
    latent_dim: int,
    num_classes: int,
    kwargs: dict[str, Any],
) -> str:
    """Why the served module with ``trial``'s convention differs from the model's own call with
    a float psi, at some psi of ``PROOF_PSI`` (one batch, one psi per sample); "" when it never
    does."""
    module = ServedGenerator(generator, trial, num_classes)
    convention = Convention(trial.truncation_convention)
    n = len(PROOF_PSI)
    inputs = probe_inputs(latent_dim, num_classes, trial, n)
    inputs[module.input_names.index("truncation")] = torch.tensor(PROOF_PSI).reshape(-1, 1)
    latent = getattr(module, "mean_latent", None)
    worst, where = 0.0, PROOF_PSI[0]
    try:
        with torch.inference_mode():
            served = module(*inputs)
            for i, psi in enumerate(PROOF_PSI):
                sample = {k: t[i : i + 1] for k, t in zip(module.input_names, inputs, strict=True)}
                own_args = module.model_args(sample)
                own = _own_call(
                    generator, own_args, kwargs, trial.truncation_arg, psi, convention, latent
                )
                diff = float((served[i : i + 1] - own).abs().max())
                if not diff <= worst:
                    worst, where = diff, psi
    except Exception as e:
        return f"fails ({type(e).__name__}: {' '.join(str(e).split())[:100]})"
    if not worst <= PROOF_ATOL:
        return f"differs from the model's own call by {worst:.3g} at psi {where}"
    return ""


def serving_module(generator: nn.Module, interface: Interface, num_classes: int) -> nn.Module:
    """The module export, the gate and bench run: the generator itself for a plain
    ``forward(z[, labels])``, else a ``ServedGenerator`` around it."""
    if interface == Interface():
        return generator
    return ServedGenerator(generator, interface, num_classes).eval()


def inspect_generator(
    generator: nn.Module,
    latent_dim: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    forward_kwargs: dict[str, Any] | None = None,
    noise: NoiseMode = NoiseMode.const,
    label: str = "the generator",
    log: Callable[[str], None] | None = None,
) -> Interface:
    """Probe ``generator`` (eval mode) and return its served interface; one-line errors."""
    say = log or (lambda _msg: None)
    kwargs = dict(forward_kwargs or {})
    _check_kwargs(generator, kwargs, label)
    # rosinality's forward takes a list and returns a tuple: only its convention runs it
    convention = detect_convention(generator)
    first = convention if convention is Convention.rosinality else Convention.forward
    interface = _class_input(generator, latent_dim, num_classes, image_shape, kwargs, label, first)
    # before the probes below, which compare outputs and would blame randomness on what they probe
    _check_deterministic(generator, interface, latent_dim, num_classes)
    truncation = _truncation(generator, interface, latent_dim, num_classes, kwargs, convention)
    if isinstance(truncation, str):
        if truncation:
            say(truncation)
    else:
        interface = truncation
        lo, hi = TRUNCATION_RANGE
        psi = interface.truncation_default
        interface.truncation_range = [min(lo, psi), max(hi, psi)]
    buffers = noise_buffers(generator)
    if NoiseMode(noise) is NoiseMode.seeded:
        interface.noise = _seeded_noise(generator, interface, buffers, latent_dim, num_classes)
    elif buffers:
        say(
            f"noise buffers {list(buffers)[:3]}{'...' if len(buffers) > 3 else ''} are served as "
            "constants; --noise seeded draws them per request from its seed"
        )
    return interface


def randomness_message(moved: float, where: str, advice: str = "") -> str:
    remedy = (
        f"export with {advice}"
        if advice
        else "make its noise a buffer or an input (e.g. --forward-kwargs noise_mode=const) so "
        "served images are reproducible"
    )
    return (
        f"the generator draws random numbers in forward: the same input twice gives images "
        f"{moved:.3g} apart (first at layer {where}); {remedy}; nothing exported"
    )


class _DrawsRandom(TorchDispatchMode):
    """Notes whether any ATen op that draws random numbers runs (``RANDOM_ATEN``)."""

    def __init__(self) -> None:
        super().__init__()
        self.found = False

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        if func._schema.name.split("::")[-1].rstrip("_") in RANDOM_ATEN:
            self.found = True
        return func(*args, **(kwargs or {}))


def _problems(
    generator: nn.Module, interface: Interface, latent_dim: int, num_classes: int
) -> frozenset[str] | None:
    """What keeps ``generator`` with ``interface`` from serving: "random" (it draws random
    numbers, even ones multiplied by zero), "batch" (a sample alone differs from itself in a
    batch); None when it does not run."""
    module = ServedGenerator(generator, interface, num_classes)
    inputs = probe_inputs(latent_dim, num_classes, interface, DIAGNOSIS_BATCH)
    draws = _DrawsRandom()
    try:
        with torch.inference_mode():
            with draws:
                first = module(*inputs)
            second = module(*inputs)
            alone = torch.cat([module(*(t[i : i + 1] for t in inputs)) for i in range(2)])
    except Exception:
        return None
    found = set()
    if draws.found or not torch.allclose(first, second, rtol=0.0, atol=DETERMINISM_ATOL):
        found.add("random")
    if not torch.allclose(alone, first[:2], rtol=0.0, atol=BATCH_ATOL):
        found.add("batch")
    return frozenset(found)


def remedies(
    generator: nn.Module, interface: Interface, latent_dim: int, num_classes: int
) -> tuple[dict[str, Any], frozenset[str]]:
    """The diagnosis pass: the forward keyword arguments that make the model deterministic and
    batch invariant (its own, plus each of ``REMEDIES``, in order, that it takes and that removes
    a problem those before it left), and the problems still left (``_problems``)."""
    kwargs = dict(interface.forward_kwargs)
    problems = _problems(generator, interface, latent_dim, num_classes)
    if problems is None:
        return kwargs, frozenset({"fails"})
    for name, value in REMEDIES:
        if not problems:
            break
        if name in kwargs:
            continue
        trial = {**kwargs, name: value}
        found = _problems(
            generator, replace(interface, forward_kwargs=trial), latent_dim, num_classes
        )
        if found is not None and found < problems:
            kwargs, problems = trial, found
    return kwargs, problems


def remedy_advice(
    module: nn.Module, interface: Interface, latent_dim: int, num_classes: int
) -> str:
    """ "--forward-kwargs a=b,c=d (...)": every option ``remedies`` found the served ``module``
    (a ``ServedGenerator`` or the generator itself) needs, the user's own included, so the one
    line is all a user must follow; "" when none helps."""
    generator = module.generator if isinstance(module, ServedGenerator) else module
    kwargs, left = remedies(generator, interface, latent_dim, num_classes)
    if kwargs == dict(interface.forward_kwargs):
        return ""
    text = ",".join(f"{k}={_format_value(v)}" for k, v in kwargs.items())
    found = "every option found needed" if not left else "which helps, not enough"
    return f"--forward-kwargs {text} ({found})"


def _format_value(value: Any) -> str:
    """A value as ``parse_forward_kwargs`` reads it back."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return "none" if value is None else str(value)


def first_differing_layer(module: nn.Module, run: Callable[[], object]) -> str:
    """The first module (in call order) whose output differs between two calls of ``run``."""
    runs: list[list[tuple[str, torch.Tensor]]] = []

    def hook(name: str) -> Callable[[nn.Module, object, object], None]:
        def fn(_m: nn.Module, _i: object, out: object) -> None:
            if isinstance(out, torch.Tensor):
                runs[-1].append((name, out.detach().clone()))

        return fn

    handles = [m.register_forward_hook(hook(n)) for n, m in module.named_modules() if n]
    try:
        for _ in range(2):
            runs.append([])
            run()
    finally:
        for h in handles:
            h.remove()
    for (name, a), (_, b) in zip(runs[0], runs[1], strict=False):
        if a.shape != b.shape or not torch.equal(a, b):
            return repr(name.removeprefix(f"{WRAPPED}."))
    return "(unknown)"


def _check_deterministic(
    generator: nn.Module, interface: Interface, latent_dim: int, num_classes: int
) -> None:
    module = ServedGenerator(generator, interface, num_classes)
    inputs = probe_inputs(latent_dim, num_classes, interface, SHAPE_PROBE_BATCH)

    def run() -> torch.Tensor:
        with torch.inference_mode():
            out: torch.Tensor = module(*inputs)
        return out

    first, second = run(), run()
    # NaN where NaN was, or inf where inf was, is the same output: the gate names such a layer
    same = torch.isclose(first, second, rtol=0.0, atol=DETERMINISM_ATOL, equal_nan=True)
    same |= first == second
    if not bool(same.all()):
        moved = float(torch.nan_to_num((first - second).abs()[~same], nan=float("inf")).max())
        advice = remedy_advice(generator, interface, latent_dim, num_classes)
        raise NondeterministicModelError(
            randomness_message(moved, first_differing_layer(module, run), advice)
        )


def noise_buffers(generator: nn.Module) -> dict[str, list[int]]:
    """Buffers named ``*noise*`` that can be per-sample noise: buffer name -> per-sample shape.

    A buffer of shape [H, W], [C, H, W] or [1, C, H, W] is served as [N, C or 1, H, W]: the model
    broadcasts it over the batch, so a per-sample tensor of that shape takes its place.
    """
    found: dict[str, list[int]] = {}
    for name, buffer in generator.named_buffers():
        if "noise" not in name.rsplit(".", 1)[-1].lower() or not buffer.is_floating_point():
            continue
        shape = [1] * (4 - buffer.dim()) + list(buffer.shape)
        if 2 <= buffer.dim() <= 4 and shape[0] == 1:
            found[name] = shape[1:]
    return found


def probe_inputs(
    latent_dim: int, num_classes: int, interface: Interface, batch: int = PROBE_BATCH
) -> list[torch.Tensor]:
    """Deterministic sample inputs for every served input (truncation at the model's default)."""
    gen = torch.Generator().manual_seed(0)
    inputs = [torch.randn(batch, latent_dim, generator=gen)]
    if num_classes > 0:
        inputs.append(torch.arange(batch, dtype=torch.int64) % num_classes)
    if interface.truncation_arg:
        inputs.append(torch.full((batch, 1), float(interface.truncation_default)))
    inputs += [torch.randn(batch, *n.shape, generator=gen) for n in interface.noise]
    return inputs


def _check_kwargs(generator: nn.Module, kwargs: dict[str, Any], label: str) -> None:
    params = inspect.signature(generator.forward).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise UsageError(
            f"--forward-kwargs {', '.join(unknown)}: {label}'s forward takes no such keyword "
            f"(it takes {list(params)})"
        )


def _class_input(
    generator: nn.Module,
    latent_dim: int,
    num_classes: int,
    image_shape: tuple[int, int, int],
    kwargs: dict[str, Any],
    label: str,
    convention: Convention = Convention.forward,
) -> Interface:
    """The first class-input convention the model runs with; the first one's error otherwise."""
    kinds = (
        [ClassInput.labels, ClassInput.onehot]
        if num_classes > 0
        else [ClassInput.labels, ClassInput.empty]
    )
    first_error: Exception | None = None
    for kind in kinds:
        interface = Interface(
            class_input=kind.value,
            forward_kwargs=kwargs,
            truncation_convention=convention.value,
        )
        try:
            module = ServedGenerator(generator, interface, num_classes)
            with torch.inference_mode():
                out = module(*probe_inputs(latent_dim, num_classes, interface, SHAPE_PROBE_BATCH))
        except Exception as e:
            first_error = first_error or e
            continue
        want = (SHAPE_PROBE_BATCH, *image_shape)
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != want:
            got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise UsageError(
                f"{label} returns {got} for batch {SHAPE_PROBE_BATCH}, --image-shape says "
                f"{want[1:]}: "
                "the generator must return one (N, C, H, W) tensor"
            )
        return interface
    what = "a conditional (z, labels)" if num_classes else "an unconditional (z)"
    assert first_error is not None
    detail = " ".join(str(first_error).split())[:160]
    raise UsageError(
        f"{label} fails on {what} input with latent dim {latent_dim} "
        f"({type(first_error).__name__}: {detail}); check --latent-dim and --num-classes"
    )


def _truncation(
    generator: nn.Module,
    interface: Interface,
    latent_dim: int,
    num_classes: int,
    kwargs: dict[str, Any],
    convention: Convention = Convention.forward,
) -> Interface | str:
    """``interface`` with truncation a per-sample input when it can be (by ``convention``, proven
    equal to the model's own call, else through ``forward``); else why not ("" if the model has
    no truncation parameter)."""
    params = inspect.signature(generator.forward).parameters
    name = next((n for n in TRUNCATION_ARGS if n in params), "")
    if not name:
        return ""
    if name in kwargs:
        return f"truncation: {name} fixed at {kwargs[name]} (--forward-kwargs); not an input"
    default = params[name].default
    if isinstance(default, bool) or not isinstance(default, int | float):
        return (
            f"truncation: {name} has no numeric default; psi is fixed "
            f"(--forward-kwargs {name}=...), not served as an input"
        )
    trial = replace(interface, truncation_arg=name, truncation_default=float(default))
    if convention is not Convention.forward:
        trial = replace(trial, truncation_convention=convention.value)
        why = _proven(generator, trial, latent_dim, num_classes, kwargs)
        if why:
            return (
                f"truncation: {convention.value}'s convention (truncation outside the model's "
                f"Python branch on psi) {why}; psi is fixed at its default {default}"
            )
        return trial
    module = ServedGenerator(generator, trial, num_classes)
    inputs = probe_inputs(latent_dim, num_classes, trial)
    psi = torch.linspace(0.25, 1.0, PROBE_BATCH).reshape(-1, 1)
    inputs[-1] = psi
    try:
        with torch.inference_mode():
            together = module(*inputs)
            alone = torch.cat([module(*(t[i : i + 1] for t in inputs)) for i in range(len(psi))])
    except Exception as e:
        return (
            f"truncation: {name} as a per-sample tensor fails ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:100]}); psi is fixed at its default {default}"
        )
    if not torch.allclose(together, alone, atol=1e-5):
        return (
            f"truncation: {name} as a [N, 1] tensor mixes samples; psi is fixed at its "
            f"default {default}"
        )
    inputs[-1] = torch.full_like(psi, float(default))
    with torch.inference_mode():
        fixed = module(*inputs)
    if torch.equal(together, fixed):
        return (
            f"truncation: {name} does not change the output (psi from 0.25 to 1.0 gives the "
            "images of its default); not served as an input"
        )
    return trial


def _seeded_noise(
    generator: nn.Module,
    interface: Interface,
    buffers: dict[str, list[int]],
    latent_dim: int,
    num_classes: int,
) -> list[NoiseInput]:
    if not buffers:
        raise UsageError(
            "--noise seeded: the model has no noise buffers (buffers named *noise* of shape "
            "[H, W], [C, H, W] or [1, C, H, W]); export with --noise const"
        )
    noise = [NoiseInput(f"noise_{i}", b, shape) for i, (b, shape) in enumerate(buffers.items())]
    seeded = replace(interface, noise=noise)
    module = ServedGenerator(generator, seeded, num_classes)
    inputs = probe_inputs(latent_dim, num_classes, seeded)
    own = dict(generator.named_buffers())
    first = len(inputs) - len(noise)
    for i, n in enumerate(noise):  # every sample gets the buffer's own value
        inputs[first + i] = own[n.buffer].reshape(1, *n.shape).expand(PROBE_BATCH, *n.shape)
    with torch.inference_mode():
        as_inputs = module(*inputs)
        as_buffers = module(*inputs[:first])
    diff = float((as_inputs - as_buffers).abs().max())
    if not diff <= 1e-5:
        raise UsageError(
            f"--noise seeded: serving the buffers {[n.buffer for n in noise][:3]} per sample "
            f"changes the output by {diff:.3g} (the model does not broadcast them over the "
            "batch); export with --noise const"
        )
    return noise
