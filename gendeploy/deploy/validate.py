"""Every manifest checked against the official models: the ``kubernetes`` package's for core and
apps objects, the ``kserve`` package's for KServe's.

A manifest is loaded field by field into the model class its apiVersion and kind name (a field the
class does not know, a value of the wrong type, or a missing required field fails with its path),
then serialised back (unset fields left out); the result must equal the manifest. The type check is
real for typed fields only: fields the models declare as ``object`` (IntOrString ports,
quantities, free-form maps) take any value. The round trip is equal by construction (the object is
built from the manifest's own fields): it catches only a field the model drops or renames.

KServe's model classes are imported without running ``kserve/__init__.py``: that file starts
KServe's model server code, whose copy of the inference gRPC protocol (``inference.*``) collides
with tritonclient's in protobuf's default descriptor pool (``duplicate symbol
'inference.ServerLiveRequest'``) once tritonclient.grpc is loaded, as it is in gendeploy. The
generated models (``kserve.models``, ``kserve.configuration``) need neither.
"""

from __future__ import annotations

import datetime
import importlib
import importlib.util
import sys
import types
from typing import Any

from gendeploy.errors import DeployError, MissingDependencyError

MODELS = {
    ("apps/v1", "Deployment"): "V1Deployment",
    ("v1", "Service"): "V1Service",
    ("v1", "ConfigMap"): "V1ConfigMap",
    ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
    ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
    ("serving.kserve.io/v1beta1", "InferenceService"): "V1beta1InferenceService",
    ("serving.kserve.io/v1alpha1", "ServingRuntime"): "V1alpha1ServingRuntime",
}
PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "object": (object,),  # IntOrString and free-form fields
    "datetime": (str, datetime.datetime),
    "date": (str, datetime.date),
}


def _packages() -> tuple[Any, Any]:
    """(kubernetes.client, kserve.models)."""
    if "kserve.models" in sys.modules:
        import kubernetes.client

        return kubernetes.client, sys.modules["kserve.models"]
    spec = importlib.util.find_spec("kserve")
    try:
        import kubernetes.client
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            "checking manifests needs the kubernetes and kserve packages: "
            "pip install 'gendeploy[deploy]'"
        )
    if "kserve" not in sys.modules:  # the package without its __init__ (see the docstring)
        package = types.ModuleType("kserve")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["kserve"] = package
    return kubernetes.client, importlib.import_module("kserve.models")


def _model_class(name: str) -> Any:
    k8s, kserve = _packages()
    cls = getattr(k8s, name, None) or getattr(kserve, name, None)
    if cls is None:
        raise DeployError(f"no model class {name} in the kubernetes or kserve packages")
    return cls


def _load(data: Any, type_name: str, path: str) -> Any:
    lowered = type_name.lower()  # "list[X]" / "List[X]", "dict(str, X)" / "Dict[str, X]"
    if lowered.startswith("list["):
        if not isinstance(data, list):
            raise DeployError(f"{path}: expected a list, got {type(data).__name__}")
        inner = type_name[5:-1]
        return [_load(x, inner, f"{path}[{i}]") for i, x in enumerate(data)]
    if lowered.startswith(("dict(", "dict[")):
        if not isinstance(data, dict):
            raise DeployError(f"{path}: expected a mapping, got {type(data).__name__}")
        inner = type_name[5:-1].split(", ", 1)[1]
        return {k: _load(v, inner, f"{path}.{k}") for k, v in data.items()}
    if type_name in PRIMITIVES:
        wrong_bool = isinstance(data, bool) and type_name in ("int", "float")
        if not isinstance(data, PRIMITIVES[type_name]) or wrong_bool:
            raise DeployError(f"{path}: expected {type_name}, got {type(data).__name__} {data!r}")
        return data
    cls = _model_class(type_name)
    if not isinstance(data, dict):
        raise DeployError(f"{path}: expected a {type_name} mapping, got {type(data).__name__}")
    known = {json_key: attr for attr, json_key in cls.attribute_map.items()}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise DeployError(f"{path}: unknown field {unknown[0]!r} for {type_name}")
    kwargs = {
        known[k]: _load(v, cls.openapi_types[known[k]], f"{path}.{k}") for k, v in data.items()
    }
    try:
        return cls(**kwargs)
    except ValueError as e:  # the model's own checks (pydantic's in kubernetes >= 35)
        text = str(e)  # its first lines, as one line
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        raise DeployError(f"{path}: {' '.join(lines[:3])[:240]}") from None


def check_manifest(manifest: dict[str, Any]) -> Any:
    """The manifest as its official model object; raises ``DeployError`` naming the first field
    the model does not accept, or where the round trip differs."""
    _packages()
    key = (str(manifest.get("apiVersion")), str(manifest.get("kind")))
    if key not in MODELS:
        raise DeployError(f"no official model known here for apiVersion/kind {key}")
    name = str(manifest.get("metadata", {}).get("name", "?"))
    obj = _load(manifest, MODELS[key], f"{key[1]} {name}")
    back = dump(obj)
    if back != manifest:
        where = _first_difference(manifest, back, f"{key[1]} {name}")
        raise DeployError(f"{where}: differs after a round trip through {MODELS[key]}")
    return obj


def dump(obj: Any) -> Any:
    """A model object as its manifest: the JSON names, unset (None) fields left out."""
    if isinstance(obj, list):
        return [dump(x) for x in obj]
    if isinstance(obj, dict):
        return {k: dump(v) for k, v in obj.items()}
    if hasattr(obj, "attribute_map") and hasattr(obj, "openapi_types"):
        return {
            json_key: dump(getattr(obj, attr))
            for attr, json_key in obj.attribute_map.items()
            if getattr(obj, attr) is not None
        }
    return obj


def _first_difference(a: Any, b: Any, path: str) -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            if a.get(k, _MISSING) != b.get(k, _MISSING):
                return _first_difference(a.get(k, _MISSING), b.get(k, _MISSING), f"{path}.{k}")
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path} ({a!r} -> {b!r})"


_MISSING = "<absent>"
