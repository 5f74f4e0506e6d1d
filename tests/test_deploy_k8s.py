"""`gendeploy deploy k8s`: manifests checked against the official Kubernetes and KServe models,
golden files, and the container command of `serve --docker`."""

from __future__ import annotations

import copy
import os
import shlex
from pathlib import Path

import pytest
from serve_support import TINY_CONDITIONAL, build_export, make_checkpoint
from typer.testing import CliRunner

from gendeploy.cli import app
from gendeploy.deploy.k8s import KEY_REF, K8sOptions, manifests, render, write_manifests
from gendeploy.deploy.validate import check_manifest
from gendeploy.errors import DeployError, UsageError
from gendeploy.serve.docker import SHELL_KEY, docker_command, image
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
    assert any("--http-restricted-api=" in a and KEY_REF in a for a in container["args"])
    assert container["env"][0]["valueFrom"]["secretKeyRef"]["name"] == "gen-admin-key"
    runtime = docs["kserve/servingruntime.yaml"]["spec"]["containers"][0]["args"]
    assert [a.replace("/mnt/models", "/models") for a in runtime] == container["args"]


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
