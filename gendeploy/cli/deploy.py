"""``gendeploy deploy k8s``: Kubernetes (and KServe) manifests for a model repository."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

deploy_app = typer.Typer(help="Manifests that run a model repository on a cluster.")


@deploy_app.command("k8s")
def k8s_command(
    repo: Annotated[Path, typer.Argument(help="Model repository (`gendeploy repo` writes one).")],
    model_store: Annotated[
        str,
        typer.Option(
            help="Where the cluster reads the models: pvc:CLAIM or pvc:CLAIM/path, s3://, gs://, "
            "az://."
        ),
    ],
    out: Annotated[Path, typer.Option(help="Directory for the manifests.")] = Path("k8s"),
    name: Annotated[str, typer.Option(help="Name of the Deployment, Service, ...")] = "gendeploy",
    namespace: Annotated[str, typer.Option(help="Namespace.")] = "default",
    tag: Annotated[str | None, typer.Option(help="NGC tag (default: as serve --docker).")] = None,
    gpus: Annotated[int, typer.Option(help="GPUs per replica (0: CPU only).")] = 1,
    cpu: Annotated[str, typer.Option(help="CPU request per replica.")] = "2",
    memory: Annotated[str, typer.Option(help="Memory request and limit per replica.")] = "4Gi",
    min_replicas: Annotated[int, typer.Option(help="Autoscaling minimum.")] = 2,
    max_replicas: Annotated[int, typer.Option(help="Autoscaling maximum.")] = 8,
    queue_compute_ratio: Annotated[
        float, typer.Option(help="Scale out above this queue-to-compute time ratio.")
    ] = 1.0,
    storage_secret: Annotated[
        str | None,
        typer.Option(
            help="Secret with the object store's credentials: env for s3:// and az://; for "
            "gs://, a service-account file under the key key.json."
        ),
    ] = None,
    grpc_only: Annotated[
        bool,
        typer.Option(
            "--grpc-only",
            help="Serve gRPC only (no HTTP frontend, gRPC probes and Service, KServe grpc-v2): "
            "for untrusted networks where the tag's HTTP frontend has crashes (docs/security.md).",
        ),
    ] = False,
    force: Annotated[bool, typer.Option(help="Replace manifests already in --out.")] = False,
) -> None:
    """Write a Deployment of the NGC tritonserver (the `serve --docker` command, management locked
    by a Secret's key), a Service, a PodDisruptionBudget, an HPA on Triton's queue-to-compute ratio
    with its Prometheus adapter rule, and a KServe ServingRuntime + InferenceService."""
    from gendeploy.deploy.k8s import K8sOptions, http_advice, manifests, write_manifests

    options = K8sOptions(
        model_store=model_store,
        name=name,
        namespace=namespace,
        tag=tag,
        gpus=gpus,
        cpu=cpu,
        memory=memory,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        queue_compute_ratio=queue_compute_ratio,
        storage_secret=storage_secret,
        grpc_only=grpc_only,
    )
    paths = write_manifests(repo, options, out, force=force)
    _, models, image_tag = manifests(repo, options)
    for path in paths:
        typer.echo(str(path))
    typer.echo(f"# serves {', '.join(models)} from {model_store} (image tag {image_tag})")
    advice = http_advice(options, image_tag)
    if advice is not None:
        typer.echo(f"warning: {advice}", err=True)
    typer.echo(
        f"# first: kubectl -n {namespace} create secret generic {options.secret} "
        "--from-literal=key=\"$(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')\""
    )
    typer.echo(f"# then:  kubectl apply -f {out}/   (docs/deploy.md: autoscaling and KServe)")


def register(app: typer.Typer) -> None:
    app.add_typer(deploy_app, name="deploy")
