"""``python -m gendeploy.tune.analyzer_main profile -f CONFIG``: Model Analyzer's own command line,
with its Triton client sending the admin key.

Model Analyzer loads and unloads model variants on the tritonserver it launches (explicit model
control). gendeploy starts that server with the same lock as ``gendeploy serve`` (every API group in
``serve.admin.LOCKED_APIS`` behind a per-run key), and Model Analyzer's client, which has no option
for request headers, is given one here: its ``TritonClientFactory`` wraps the tritonclient it
creates so that the locked calls carry the key from ``$GENDEPLOY_ADMIN_KEY``. Nothing else of Model
Analyzer changes.

What guards what: the lock is the server's own flags, set whatever this wrapper does, so a client
that does not send the key gets its loads refused and the run fails; it never runs an unlocked
server. The wrapper checks only what it patches (the factory methods, the ``_client`` attribute)
and stops with a one-line ``gendeploy:`` message when those are missing; it is written for the
Model Analyzer version pinned in pyproject.toml (``tune.analyzer.MODEL_ANALYZER_VERSION``), which
``gendeploy tune`` checks before it starts.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from gendeploy.serve.admin import KEY_ENV, admin_headers

LOCKED_CALLS = ("load_model", "unload_model", "get_model_repository_index")


class KeyedClient:
    """A tritonclient whose model-repository calls carry the admin header."""

    def __init__(self, inner: Any, headers: dict[str, str]) -> None:
        self._inner = inner
        self._headers = headers

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in LOCKED_CALLS:
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            return attr(
                *args, headers={**(kwargs.pop("headers", None) or {}), **self._headers}, **kwargs
            )

        return call


def _keyed(create: Callable[..., Any], headers: dict[str, str]) -> Callable[..., Any]:
    def make(*args: Any, **kwargs: Any) -> Any:
        client = create(*args, **kwargs)
        if not hasattr(client, "_client"):
            raise SystemExit("gendeploy: this Model Analyzer's client has no _client to key")
        client._client = KeyedClient(client._client, headers)
        return client

    return make


def install(key: str) -> None:
    """Make every Triton client Model Analyzer creates send ``key``."""
    from model_analyzer.triton.client.client_factory import TritonClientFactory

    for name, protocol in (("create_http_client", "http"), ("create_grpc_client", "grpc")):
        create = getattr(TritonClientFactory, name, None)
        if create is None:
            raise SystemExit(f"gendeploy: Model Analyzer has no TritonClientFactory.{name}")
        setattr(
            TritonClientFactory, name, staticmethod(_keyed(create, admin_headers(key, protocol)))
        )


def main() -> None:
    key = os.environ.get(KEY_ENV)
    if not key:
        raise SystemExit(f"gendeploy: set {KEY_ENV} to the tuning server's admin key")
    install(key)
    from model_analyzer.entrypoint import main as analyzer

    sys.argv = ["model-analyzer", *sys.argv[1:]]
    analyzer()


if __name__ == "__main__":
    main()
