"""``gendeploy deploy k8s``: Kubernetes manifests for a model repository.

The container runs the command ``gendeploy serve --docker`` prints (``serve.docker``'s
``tritonserver_args``, the NGC image and tag it chooses): every management API behind the admin
key, which comes from a Kubernetes Secret through ``$(GENDEPLOY_ADMIN_KEY)``. Only the NGC-runnable
models are served (``container_models``; the python-backend ones need packages the image lacks).
From a PersistentVolumeClaim each is mounted read-only at ``/models/<model>`` (as ``--docker``
mounts them), so model control "none" serves exactly them. An object store (s3://, gs://, az://)
and KServe's ``storageUri`` hand Triton the whole directory, python models included: there model
control "explicit" loads exactly the container models at start (``--load-model``), since "none"
would try every model and a python one that fails to load makes Triton exit. Written: a
Deployment, a Service, a PodDisruptionBudget, an HPA on Triton's queue-to-compute time ratio with
the Prometheus adapter's rule that computes it, and a KServe ServingRuntime + InferenceService.
Each is checked against the official models (``deploy.validate``) before anything is written.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gendeploy.cpus import ENV as THREADS_ENV
from gendeploy.deploy.validate import check_manifest
from gendeploy.errors import DeployError, ServeError, UsageError
from gendeploy.fileio import atomic_write_bytes
from gendeploy.serve.admin import KEY_ENV
from gendeploy.serve.docker import (
    container_models,
    container_tag,
    engine_tensorrt_version,
    http_frontend_fixed,
    http_warning,
    image,
    max_input_bytes,
    tritonserver_args,
)

KEY_REF = f"$({KEY_ENV})"  # Kubernetes expands it from the container's env
KEY_SECRET_KEY = "key"
STORE_SCHEMES = ("s3://", "gs://", "az://")
PORTS = {"http": 8000, "grpc": 8001, "metrics": 8002}
TRITON_UID = 1000  # the NGC image's triton-server user
RATIO_METRIC = "triton_queue_compute_ratio"
# Triton's GCS client reads a service-account file named by GOOGLE_APPLICATION_CREDENTIALS
GCS_MOUNT, GCS_KEY = "/var/run/secrets/gendeploy-storage", "key.json"
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,50}[a-z0-9])?")


@dataclass(frozen=True)
class K8sOptions:
    model_store: str  # pvc:CLAIM[/path] or s3://..., gs://..., az://...
    name: str = "gendeploy"
    namespace: str = "default"
    tag: str | None = None  # default: as `serve --docker` chooses
    gpus: int = 1
    cpu: str = "2"
    memory: str = "4Gi"
    min_replicas: int = 2
    max_replicas: int = 8
    queue_compute_ratio: float = 1.0  # HPA target: mean queue time per unit of compute time
    storage_secret: str | None = None  # the object store's credentials (env; gs://: a file)
    grpc_only: bool = False  # no HTTP frontend: for tags whose HTTP frontend still crashes

    def __post_init__(self) -> None:
        for label, value in (("--name", self.name), ("--namespace", self.namespace)):
            if not _NAME.fullmatch(value):
                raise UsageError(f"{label} {value!r} must be a DNS label (a-z, 0-9, '-')")
        if not (self.model_store.startswith("pvc:") or self.model_store.startswith(STORE_SCHEMES)):
            raise UsageError(
                f"--model-store {self.model_store!r}: give pvc:CLAIM[/path] or an s3://, gs:// "
                "or az:// URI"
            )
        if self.gpus < 0 or not 1 <= self.min_replicas <= self.max_replicas:
            raise UsageError("need --gpus >= 0 and 1 <= --min-replicas <= --max-replicas")
        if self.queue_compute_ratio <= 0:
            raise UsageError("--queue-compute-ratio must be > 0")

    @property
    def pvc(self) -> tuple[str, str] | None:
        """(claim, path inside it) for a pvc: store."""
        if not self.model_store.startswith("pvc:"):
            return None
        claim, _, sub = self.model_store[4:].partition("/")
        return claim, sub.strip("/")

    @property
    def secret(self) -> str:
        return f"{self.name}-admin-key"


def _labels(o: K8sOptions) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "tritonserver",
        "app.kubernetes.io/instance": o.name,
        "app.kubernetes.io/managed-by": "gendeploy",
    }


def _meta(o: K8sOptions, name: str) -> dict[str, Any]:
    return {"name": name, "namespace": o.namespace, "labels": _labels(o)}


def _env(o: K8sOptions) -> list[dict[str, Any]]:
    ref = {"name": o.secret, "key": KEY_SECRET_KEY}
    # the served engines split the pod's CPU request among their instances, not the node's
    # cores (backend_model.engine_threads); the downward API rounds it up to whole CPUs
    cpus = {"resource": "requests.cpu", "divisor": "1"}
    return [
        {"name": KEY_ENV, "valueFrom": {"secretKeyRef": ref}},
        {"name": THREADS_ENV, "valueFrom": {"resourceFieldRef": cpus}},
    ]


def _resources(o: K8sOptions) -> dict[str, Any]:
    limits = {"memory": o.memory}
    if o.gpus:
        limits["nvidia.com/gpu"] = str(o.gpus)
    return {"requests": {"cpu": o.cpu, "memory": o.memory}, "limits": limits}


def _ports(o: K8sOptions) -> dict[str, int]:
    """The container's ports: no HTTP for a gRPC-only server (metrics has its own listener)."""
    return {n: p for n, p in PORTS.items() if not (o.grpc_only and n == "http")}


def _probe(o: K8sOptions, path: str, period: int, failures: int) -> dict[str, Any]:
    """Triton's health over HTTP; gRPC-only, the standard gRPC health service, which Triton
    answers SERVING once live (its models are loaded before its endpoints open)."""
    check: dict[str, Any] = {"httpGet": {"path": path, "port": "http"}}
    if o.grpc_only:
        check = {"grpc": {"port": PORTS["grpc"]}}
    return {**check, "periodSeconds": period, "failureThreshold": failures}


def _security() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": TRITON_UID,
        "runAsGroup": TRITON_UID,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }


def _server_args(
    o: K8sOptions, model_dir: str, models: list[str] | None, limit: int | None
) -> list[str]:
    return tritonserver_args(KEY_REF, model_dir, models, http=not o.grpc_only, max_input_size=limit)


def deployment(o: K8sOptions, models: list[str], tag: str, limit: int | None) -> dict[str, Any]:
    pvc = o.pvc
    # a claim mounts only the served models; an object store holds the whole repository
    args = (
        _server_args(o, "/models", None, limit)
        if pvc
        else _server_args(o, o.model_store, models, limit)
    )
    container: dict[str, Any] = {
        "name": "tritonserver",
        "image": image(tag),
        "args": args,
        "env": _env(o),
        "ports": [{"name": n, "containerPort": p, "protocol": "TCP"} for n, p in _ports(o).items()],
        # loading engines can take minutes: liveness waits for the startup probe
        "startupProbe": _probe(o, "/v2/health/live", 10, 60),
        "livenessProbe": _probe(o, "/v2/health/live", 10, 3),
        "readinessProbe": _probe(o, "/v2/health/ready", 5, 3),
        "resources": _resources(o),
        "securityContext": _security(),
    }
    pod: dict[str, Any] = {"containers": [container]}
    if o.storage_secret and o.model_store.startswith("gs://"):  # a file, not env variables
        path = f"{GCS_MOUNT}/{GCS_KEY}"
        container["env"].append({"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": path})
        container["volumeMounts"] = [
            {"name": "storage-credentials", "mountPath": GCS_MOUNT, "readOnly": True}
        ]
        pod["volumes"] = [
            {"name": "storage-credentials", "secret": {"secretName": o.storage_secret}}
        ]
    elif o.storage_secret:  # s3:// and az:// read their credentials from the environment
        container["envFrom"] = [{"secretRef": {"name": o.storage_secret}}]
    if pvc:
        claim, sub = pvc
        container["volumeMounts"] = [
            {
                "name": "models",
                "mountPath": f"/models/{m}",
                "subPath": f"{sub}/{m}" if sub else m,
                "readOnly": True,
            }
            for m in models
        ]
        pod["volumes"] = [
            {"name": "models", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        ]
    metrics = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(PORTS["metrics"]),
        "prometheus.io/path": "/metrics",
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(o, o.name),
        # no replicas: the HPA owns them (a value here would reset them on every apply)
        "spec": {
            "selector": {"matchLabels": _labels(o)},
            "template": {"metadata": {"labels": _labels(o), "annotations": metrics}, "spec": pod},
        },
    }


def service(o: K8sOptions) -> dict[str, Any]:
    ports = [
        {"name": n, "port": p, "targetPort": n, "protocol": "TCP"} for n, p in _ports(o).items()
    ]
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(o, o.name),
        "spec": {"type": "ClusterIP", "selector": _labels(o), "ports": ports},
    }


def disruption_budget(o: K8sOptions) -> dict[str, Any]:
    # one replica: allow its eviction (a budget of 1 available would block every node drain)
    budget = {"minAvailable": 1} if o.min_replicas >= 2 else {"maxUnavailable": 1}
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(o, o.name),
        "spec": {"selector": {"matchLabels": _labels(o)}, **budget},
    }


def _quantity(x: float) -> str:
    milli = round(x * 1000)
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def autoscaler(o: K8sOptions) -> dict[str, Any]:
    target = {"type": "AverageValue", "averageValue": _quantity(o.queue_compute_ratio)}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _meta(o, o.name),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": o.name},
            "minReplicas": o.min_replicas,
            "maxReplicas": o.max_replicas,
            "metrics": [
                {"type": "Pods", "pods": {"metric": {"name": RATIO_METRIC}, "target": target}}
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def adapter_rules() -> dict[str, Any]:
    """prometheus-adapter Helm values: the per-pod ratio of Triton's cumulative queue time to its
    compute time over the last minute (0 when idle)."""
    over = "[1m])) by (<<.GroupBy>>)"
    query = (
        f"sum(rate(nv_inference_queue_duration_us{{<<.LabelMatchers>>}}{over} / "
        f"clamp_min(sum(rate(nv_inference_compute_infer_duration_us{{<<.LabelMatchers>>}}{over}, 1)"
    )
    return {
        "rules": {
            "custom": [
                {
                    "seriesQuery": 'nv_inference_queue_duration_us{namespace!="",pod!=""}',
                    "resources": {
                        "overrides": {
                            "namespace": {"resource": "namespace"},
                            "pod": {"resource": "pod"},
                        }
                    },
                    "name": {"matches": "^nv_inference_queue_duration_us$", "as": RATIO_METRIC},
                    "metricsQuery": query,
                }
            ]
        }
    }


def serving_runtime(
    o: K8sOptions, models: list[str], tag: str, limit: int | None
) -> dict[str, Any]:
    # Knative routes one port: HTTP/1 named http1, or gRPC (HTTP/2 cleartext) named h2c
    port = {"name": "http1", "containerPort": PORTS["http"], "protocol": "TCP"}
    probe = {
        **_probe(o, "/v2/health/ready", 5, 3),
        "httpGet": {"path": "/v2/health/ready", "port": PORTS["http"]},  # by number (http1)
    }
    if o.grpc_only:
        port = {"name": "h2c", "containerPort": PORTS["grpc"], "protocol": "TCP"}
        probe = _probe(o, "", 5, 3)
    container = {
        "name": "kserve-container",
        "image": image(tag),
        # KServe puts the whole storageUri at /mnt/models: load only the container's models
        "args": _server_args(o, "/mnt/models", models, limit),
        "env": _env(o),
        "ports": [port],
        "readinessProbe": probe,
        "resources": _resources(o),
        "securityContext": _security(),
    }
    return {
        "apiVersion": "serving.kserve.io/v1alpha1",
        "kind": "ServingRuntime",
        "metadata": _meta(o, f"{o.name}-tritonserver"),
        "spec": {
            "supportedModelFormats": [{"name": "triton", "version": "2", "autoSelect": False}],
            # the one port Knative routes: declare only the protocol served there
            "protocolVersions": [_kserve_protocol(o)],
            "containers": [container],
        },
    }


def _kserve_protocol(o: K8sOptions) -> str:
    return "grpc-v2" if o.grpc_only else "v2"


def inference_service(o: K8sOptions) -> dict[str, Any]:
    pvc = o.pvc
    uri = f"pvc://{pvc[0]}/{pvc[1]}".rstrip("/") if pvc else o.model_store
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": _meta(o, o.name),
        "spec": {
            "predictor": {
                "minReplicas": o.min_replicas,
                "maxReplicas": o.max_replicas,
                "model": {
                    "name": "kserve-container",
                    "modelFormat": {"name": "triton"},
                    "runtime": f"{o.name}-tritonserver",
                    "protocolVersion": _kserve_protocol(o),
                    "storageUri": uri,
                },
            }
        },
    }


def manifests(repo: Path, o: K8sOptions) -> tuple[dict[str, Any], list[str], str]:
    """(relative path -> manifest, the models served, the image tag)."""
    models = container_models(repo)
    if not models:
        raise DeployError(
            f"{repo} has no onnxruntime_onnx or tensorrt_plan model: the NGC container runs only "
            "those (write them with `gendeploy repo EXPORT_DIR`)"
        )
    try:
        tag = o.tag or container_tag(engine_tensorrt_version(repo))[0]
    except ServeError as e:  # its advice names serve's flag; here the flag is --tag
        raise DeployError(str(e).replace("--docker-tag", "--tag")) from None
    limit = max_input_bytes(repo, models) if http_frontend_fixed(tag) else None
    out = {
        "deployment.yaml": deployment(o, models, tag, limit),
        "service.yaml": service(o),
        "pdb.yaml": disruption_budget(o),
        "hpa.yaml": autoscaler(o),
        "prometheus-adapter/values.yaml": adapter_rules(),
        "kserve/servingruntime.yaml": serving_runtime(o, models, tag, limit),
        "kserve/inferenceservice.yaml": inference_service(o),
    }
    return out, models, tag


def http_advice(o: K8sOptions, tag: str) -> str | None:
    """A warning where the chosen tag's HTTP frontend still has the request crashes."""
    if o.grpc_only or http_frontend_fixed(tag):
        return None
    why = "the engine's TensorRT pins it" if o.tag is None else "chosen with --tag"
    return f"{http_warning(tag, '--grpc-only')} ({why})"


def render(manifest: dict[str, Any]) -> str:
    import yaml

    return str(yaml.safe_dump(manifest, sort_keys=False, width=100))


def write_manifests(repo: Path, o: K8sOptions, out: Path, force: bool = False) -> list[Path]:
    """Check every manifest, then write them all under ``out`` (never over files unless
    ``force``)."""

    if not repo.is_dir():
        raise UsageError(f"model repository {repo} does not exist; run `gendeploy repo EXPORT_DIR`")
    docs, _, _ = manifests(repo, o)
    for doc in docs.values():
        if "apiVersion" in doc:
            check_manifest(doc)
    existing = [out / p for p in docs if (out / p).exists()]
    if existing and not force:
        raise UsageError(f"{existing[0]} exists; pass --force to replace the manifests in {out}")
    written = []
    for path, doc in docs.items():
        atomic_write_bytes(out / path, render(doc).encode())
        written.append(out / path)
    return written
