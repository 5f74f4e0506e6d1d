"""``gendeploy deploy``: manifests that run a model repository on a cluster (docs/deploy.md)."""
