"""`gendeploy deploy k8s`: manifests checked against the official Kubernetes and KServe models,
golden files, and the container command of `serve --docker`."""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from serve_support import (
    TINY_CONDITIONAL,
    build_export,
    container_tritonserver,
    make_checkpoint,
    require_tritonserver,
)
from typer.testing import CliRunner

from gendeploy.cli import app
from gendeploy.deploy.k8s import (
    KEY_REF,
    K8sOptions,
    http_advice,
    manifests,
    render,
    write_manifests,
)
from gendeploy.deploy.validate import check_manifest
from gendeploy.errors import DeployError, UsageError
from gendeploy.serve.admin import ADMIN_HEADER, new_key
from gendeploy.serve.docker import (
    DEFAULT_TAG,
    SHELL_KEY,
    container_models,
    docker_command,
    http_frontend_fixed,
    image,
    tritonserver_args,
)
from gendeploy.serve.repo import write_repo

GOLDEN = Path(__file__).parent / "golden" / "k8s"
PVC = K8sOptions(model_store="pvc:models/triton_repo", name="gen", namespace="serving", gpus=1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("k8s")
    checkpoint = make_checkpoint(TINY_CONDITIONAL, root / "c.pt")
    write_repo(build_export(checkpoint, root / "export", "tinyc"), root / "repo")
    return root / "repo"


def test_manifests_equal_the_golden_files(repo: Path, tmp_path: Path) -> None:
    written = write_manifests(repo, PVC, tmp_path / "k8s")
    if os.environ.get("GENDEPLOY_UPDATE_GOLDEN"):  # regenerate after a deliberate change
        for p in written:
            (GOLDEN / p.relative_to(tmp_path / "k8s")).parent.mkdir(parents=True, exist_ok=True)
            (GOLDEN / p.relative_to(tmp_path / "k8s")).write_text(p.read_text())
    names = sorted(str(p.relative_to(tmp_path / "k8s")) for p in written)
    assert names == sorted(str(p.relative_to(GOLDEN)) for p in GOLDEN.rglob("*.yaml"))
    for p in written:
        assert p.read_text() == (GOLDEN / p.relative_to(tmp_path / "k8s")).read_text(), p.name


def test_every_manifest_loads_into_its_official_model_and_round_trips(repo: Path) -> None:
    import kubernetes.client

    docs, models, tag = manifests(repo, PVC)
    assert models == ["tinyc_onnx"]  # the python models need onnxruntime, absent from NGC's image
    kinds = {}
    for path, doc in docs.items():
        if "apiVersion" in doc:
            kinds[path] = type(check_manifest(doc)).__name__
    assert kinds == {
        "deployment.yaml": "V1Deployment",
        "service.yaml": "V1Service",
        "pdb.yaml": "V1PodDisruptionBudget",
        "hpa.yaml": "V2HorizontalPodAutoscaler",
        "kserve/servingruntime.yaml": "V1alpha1ServingRuntime",
        "kserve/inferenceservice.yaml": "V1beta1InferenceService",
    }
    deployment = check_manifest(docs["deployment.yaml"])
    assert isinstance(deployment, kubernetes.client.V1Deployment)
    assert deployment.spec.template.spec.containers[0].image == image(tag)


def test_an_unknown_field_a_wrong_type_and_a_missing_required_field_are_refused(
    repo: Path,
) -> None:
    docs, _, _ = manifests(repo, PVC)
    unknown = copy.deepcopy(docs["deployment.yaml"])
    unknown["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(DeployError, match=r"containers\[0\]: unknown field 'imagePullPolicyy'"):
        check_manifest(unknown)
    wrong = copy.deepcopy(docs["service.yaml"])
    wrong["spec"]["ports"][0]["port"] = "8000"
    with pytest.raises(DeployError, match=r"ports\[0\]\.port: expected int"):
        check_manifest(wrong)
    missing = copy.deepcopy(docs["hpa.yaml"])
    del missing["spec"]["maxReplicas"]
    with pytest.raises(DeployError, match=r"hpa|gen\.spec: .*[mM]ax_?[rR]eplicas"):
        check_manifest(missing)
    isvc = copy.deepcopy(docs["kserve/inferenceservice.yaml"])
    isvc["spec"]["predictor"]["model"]["storageURI"] = "s3://x"
    with pytest.raises(DeployError, match="unknown field 'storageURI'"):
        check_manifest(isvc)


def test_the_container_runs_what_serve_docker_prints(repo: Path) -> None:
    command, _, tag = docker_command(repo)
    words = shlex.split(command)
    printed = words[words.index(image(tag)) + 1 :]
    docs, _, _ = manifests(repo, PVC)
    container = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    args = [a.replace(KEY_REF, SHELL_KEY) for a in container["args"]]
    assert args == printed
    assert container["image"] == image(tag) and image(tag) in words
    # the same models: docker's -v targets are the pod's mount paths
    volumes = [words[i + 1] for i, w in enumerate(words) if w == "-v"]
    docker_targets = sorted(v.split(":")[1] for v in volumes)
    assert docker_targets == sorted(m["mountPath"] for m in container["volumeMounts"])
    assert docker_targets == [f"/models/{m}" for m in container_models(repo)]
    assert any("--http-restricted-api=" in a and KEY_REF in a for a in container["args"])
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "gen-admin-key"


def _loaded(args: list[str]) -> tuple[str, list[str]]:
    """(model control mode, the models loaded at start) of a tritonserver command."""
    mode = next(a.split("=", 1)[1] for a in args if a.startswith("--model-control-mode="))
    return mode, [a.split("=", 1)[1] for a in args if a.startswith("--load-model=")]


def test_where_the_whole_repository_is_handed_over_only_the_container_models_load(
    repo: Path,
) -> None:
    """An object store and KServe's storageUri hold the python models too: loading everything
    (model control "none") would crash-loop the pod, so exactly container_models load."""
    served = container_models(repo)
    assert served and all(not m.endswith(("_uint8",)) and m != "tinyc" for m in served)
    store = manifests(repo, K8sOptions(model_store="s3://bucket/models"))[0]
    container = store["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert _loaded(container["args"]) == ("explicit", served)
    for options in (PVC, K8sOptions(model_store="gs://b/r")):
        docs = manifests(repo, options)[0]
        runtime = docs["kserve/servingruntime.yaml"]["spec"]["containers"][0]["args"]
        assert _loaded(runtime) == ("explicit", served)
        assert "--model-repository=/mnt/models" in runtime
    pvc = manifests(repo, PVC)[0]["deployment.yaml"]["spec"]["template"]["spec"]
    assert _loaded(pvc["containers"][0]["args"]) == ("none", [])  # only the models are mounted


def test_kserve_declares_the_v2_protocol_it_exposes(repo: Path) -> None:
    docs = manifests(repo, PVC)[0]
    runtime = docs["kserve/servingruntime.yaml"]["spec"]
    ports = runtime["containers"][0]["ports"]
    assert [p["name"] for p in ports] == ["http1"]  # Knative routes one port: HTTP
    assert runtime["protocolVersions"] == ["v2"]
    model = docs["kserve/inferenceservice.yaml"]["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"


@pytest.mark.parametrize(
    ("tag", "fixed"),
    [("26.04", True), ("26.08", True), ("27.01", True), ("26.03", False), ("25.06", False),
     ("25.01", False), ("latest", False)],
)  # fmt: skip
def test_only_tags_from_26_04_have_every_http_frontend_fix(tag: str, fixed: bool) -> None:
    assert http_frontend_fixed(tag) is fixed


def test_a_tag_with_the_http_fixes_caps_requests_and_an_older_one_is_warned_of(
    repo: Path, tmp_path: Path
) -> None:
    """No engine pins the tag: the newest checked one, with --http-max-input-size sized to the
    models (1 MiB for a tiny generator). A tag before 26.04 gets no such flag (Triton 2.51-2.58
    refuse it) and a warning that offers the gRPC-only Service."""
    docs, _, tag = manifests(repo, PVC)
    args = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert tag == DEFAULT_TAG and "--http-max-input-size=1048576" in args
    assert http_advice(PVC, tag) is None
    old = K8sOptions(model_store="pvc:models", tag="25.01")
    docs, _, _ = manifests(repo, old)
    args = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert not any(a.startswith("--http-max-input-size") for a in args)
    advice = http_advice(old, "25.01")
    assert advice is not None and "aborts the whole server" in advice and "--grpc-only" in advice
    out = tmp_path / "k8s"
    result = CliRunner().invoke(
        app, ["deploy", "k8s", str(repo), "--model-store", "pvc:m", "--tag", "25.01", "--out", out]
    )
    assert result.exit_code == 0, result.output
    assert "warning: the HTTP frontend of tag 25.01 aborts" in result.output


def test_grpc_only_serves_no_http_anywhere(repo: Path) -> None:
    """--grpc-only: tritonserver's HTTP frontend off, gRPC health probes, a Service without an
    HTTP port, KServe on grpc-v2 through its h2c port; every manifest still passes the official
    models."""
    options = K8sOptions(model_store="pvc:models/triton_repo", name="gen", grpc_only=True)
    docs, _, _ = manifests(repo, options)
    for doc in docs.values():
        if "apiVersion" in doc:
            check_manifest(doc)
    container = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert "--allow-http=false" in container["args"]
    assert not any(a.startswith(("--http-", "--http_")) for a in container["args"])
    assert [p["name"] for p in container["ports"]] == ["grpc", "metrics"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"] == {"port": 8001} and "httpGet" not in container[probe]
    assert [p["name"] for p in docs["service.yaml"]["spec"]["ports"]] == ["grpc", "metrics"]
    runtime = docs["kserve/servingruntime.yaml"]["spec"]
    assert runtime["protocolVersions"] == ["grpc-v2"]
    assert runtime["containers"][0]["ports"] == [
        {"name": "h2c", "containerPort": 8001, "protocol": "TCP"}
    ]
    assert runtime["containers"][0]["readinessProbe"]["grpc"] == {"port": 8001}
    model = docs["kserve/inferenceservice.yaml"]["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "grpc-v2"
    command, _, _ = docker_command(repo, http=False)
    assert "-p127.0.0.1:8000:8000" not in command and "--allow-http=false" in command


def test_the_deployment_leaves_its_replicas_to_the_autoscaler(repo: Path) -> None:
    docs = manifests(repo, PVC)[0]
    assert "replicas" not in docs["deployment.yaml"]["spec"]
    assert docs["hpa.yaml"]["spec"]["minReplicas"] == PVC.min_replicas


def test_an_unknown_tensorrt_version_asks_for_this_commands_tag_flag(
    repo: Path, tmp_path: Path
) -> None:
    copy_ = tmp_path / "repo"
    shutil.copytree(repo, copy_)
    manifest_path = copy_ / "tinyc" / "1" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["artifacts"].append({"kind": "tensorrt", "extra": {"tensorrt": "99.1.0"}})
    manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(DeployError, match=r"pass --tag$"):
        manifests(copy_, PVC)
    assert manifests(copy_, K8sOptions(model_store="s3://b", tag="25.01"))[2] == "25.01"


def _http(url: str, path: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{url}{path}", data=b"{}" if "repository" in path else None, headers=headers or {}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


@pytest.mark.triton
def test_explicit_flags_load_exactly_the_listed_models_where_none_would_exit(
    repo: Path, tmp_path: Path
) -> None:
    """The KServe / object-store flags on the pip tritonserver, over a repository with python
    models and the NGC-only tinyc_onnx (which the pip server cannot load, as the NGC image
    cannot load the python ones): the listed model loads, nothing else is tried, and the
    server runs; model control "none" over the same directory exits."""
    require_tritonserver()
    key = new_key()
    explicit = tritonserver_args(key, str(repo), ["tinyc_uint8"])
    with container_tritonserver(explicit, tmp_path / "explicit.log") as (process, url):
        deadline = time.monotonic() + 120
        while _http_ready(url) is False and time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "explicit.log").read_text()[-2000:]
            time.sleep(0.25)
        assert _http(url, "/v2/models/tinyc_uint8/ready")[0] == 200
        assert _http(url, "/v2/models/tinyc/ready")[0] != 200
        assert _http(url, "/v2/models/tinyc_onnx/ready")[0] != 200
        status, index = _http(url, "/v2/repository/index", {ADMIN_HEADER: key})
        assert status == 200
        states = {m["name"]: m.get("state") for m in index}
        assert states == {"tinyc": None, "tinyc_onnx": None, "tinyc_uint8": "READY"}
        assert _http(url, "/v2/repository/models/tinyc/load")[0] == 403  # no key: locked
        assert process.poll() is None
    with container_tritonserver(tritonserver_args(key, str(repo)), tmp_path / "none.log") as (
        process,
        _,
    ):
        assert process.wait(timeout=120) != 0
    assert "tinyc_onnx" in (tmp_path / "none.log").read_text()


def _http_ready(url: str) -> bool:
    try:
        return _http(url, "/v2/health/ready")[0] == 200
    except OSError:
        return False


def test_each_served_model_is_mounted_read_only_from_the_claim(repo: Path) -> None:
    docs, _, _ = manifests(repo, PVC)
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    mounts = pod["containers"][0]["volumeMounts"]
    assert mounts == [
        {
            "name": "models",
            "mountPath": "/models/tinyc_onnx",
            "subPath": "triton_repo/tinyc_onnx",
            "readOnly": True,
        }
    ]
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "models", "readOnly": True}


def test_an_object_store_is_the_model_repository_and_its_secret_the_credentials(
    repo: Path,
) -> None:
    options = K8sOptions(model_store="s3://bucket/models", storage_secret="s3-creds")
    docs, _, _ = manifests(repo, options)
    container = docs["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert "--model-repository=s3://bucket/models" in container["args"]
    assert container["envFrom"] == [{"secretRef": {"name": "s3-creds"}}]
    assert "volumes" not in docs["deployment.yaml"]["spec"]["template"]["spec"]
    assert docs["kserve/inferenceservice.yaml"]["spec"]["predictor"]["model"]["storageUri"] == (
        "s3://bucket/models"
    )
    for doc in docs.values():
        if "apiVersion" in doc:
            check_manifest(doc)


def test_gcs_credentials_are_a_mounted_file_named_by_the_env(repo: Path) -> None:
    docs, _, _ = manifests(repo, K8sOptions(model_store="gs://b/r", storage_secret="gcs"))
    pod = docs["deployment.yaml"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    mount = container["volumeMounts"][0]
    assert env["GOOGLE_APPLICATION_CREDENTIALS"] == f"{mount['mountPath']}/key.json"
    assert mount["readOnly"] and "envFrom" not in container
    assert pod["volumes"] == [{"name": mount["name"], "secret": {"secretName": "gcs"}}]
    check_manifest(docs["deployment.yaml"])


def test_the_autoscaler_targets_the_adapters_queue_to_compute_ratio(repo: Path) -> None:
    docs, _, _ = manifests(repo, K8sOptions(model_store="gs://b/r", queue_compute_ratio=0.5))
    metric = docs["hpa.yaml"]["spec"]["metrics"][0]["pods"]
    rule = docs["prometheus-adapter/values.yaml"]["rules"]["custom"][0]
    assert metric["metric"]["name"] == rule["name"]["as"]
    assert metric["target"] == {"type": "AverageValue", "averageValue": "500m"}
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"]
    assert "nv_inference_compute_infer_duration_us" in rule["metricsQuery"]


def test_one_replica_gets_a_budget_that_lets_nodes_drain(repo: Path) -> None:
    one = K8sOptions(model_store="az://c/r", min_replicas=1, max_replicas=2)
    assert manifests(repo, one)[0]["pdb.yaml"]["spec"]["maxUnavailable"] == 1
    assert manifests(repo, PVC)[0]["pdb.yaml"]["spec"]["minAvailable"] == 1


def test_bad_options_and_existing_files_are_refused_before_writing(
    repo: Path, tmp_path: Path
) -> None:
    with pytest.raises(UsageError, match="pvc:CLAIM"):
        K8sOptions(model_store="/data/models")
    with pytest.raises(UsageError, match="DNS label"):
        K8sOptions(model_store="s3://b", name="Gen_1")
    out = tmp_path / "k8s"
    write_manifests(repo, PVC, out)
    before = (out / "deployment.yaml").read_text()
    with pytest.raises(UsageError, match="--force"):
        write_manifests(repo, K8sOptions(model_store="s3://other"), out)
    assert (out / "deployment.yaml").read_text() == before
    result = CliRunner().invoke(
        app, ["deploy", "k8s", str(repo), "--model-store", "nfs://x", "--out", str(tmp_path / "o")]
    )
    assert result.exit_code != 0 and not (tmp_path / "o").exists()


def test_rendered_yaml_parses_back_to_the_manifest(repo: Path) -> None:
    import yaml

    for doc in manifests(repo, PVC)[0].values():
        assert yaml.safe_load(render(doc)) == doc
