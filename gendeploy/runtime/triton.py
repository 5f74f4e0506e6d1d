"""A Runner that calls a model served by Triton over HTTP or gRPC (tritonclient).

Feeds use the export's names: ``z`` float32 (N, latent), ``labels`` int64 (N,) and, for the
python-backend models, ``seed`` int64 (N,) instead of ``z``. Rank-1 feeds are sent as (N, 1), the
shape the model configs declare. One runner holds one connection: use one runner per thread.
"""

from __future__ import annotations

from http.client import HTTPException  # geventhttpclient's "connection closed" is one
from typing import Any

import numpy as np

from gendeploy.errors import ServeError
from gendeploy.protocol import Protocol
from gendeploy.runtime.base import Feeds, Runner

PROTOCOLS = tuple(p.value for p in Protocol)


class InferenceError(ServeError):
    """The server refused or failed a request; ``status`` is its HTTP code or gRPC status name."""

    def __init__(self, message: str, status: str) -> None:
        super().__init__(message)
        self.status = status


def client_module(protocol: str) -> Any:
    if protocol not in PROTOCOLS:
        raise ServeError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError as e:
        raise ServeError(f"tritonclient[{protocol}] is not installed ({e})") from None
    return module


def connect(url: str, protocol: str = "http", timeout_s: float = 60.0) -> Any:
    """A tritonclient ``InferenceServerClient`` for ``host:port`` (no scheme)."""
    module = client_module(protocol)
    url = url.removeprefix("http://")
    if protocol == "http":
        return module.InferenceServerClient(
            url, connection_timeout=timeout_s, network_timeout=timeout_s
        )
    return module.InferenceServerClient(url)


def as_inference_error(e: Exception, model: str) -> InferenceError:
    status = getattr(e, "status", lambda: None)() or "unknown"
    message = getattr(e, "message", lambda: str(e))() or str(e)
    return InferenceError(f"{model}: {' '.join(str(message).split())} [{status}]", str(status))


class TritonRunner(Runner):
    """Runs one batch on a served model and returns its single (or named) output."""

    name = "triton"

    def __init__(
        self,
        url: str,
        model: str,
        protocol: str = "http",
        output: str = "images",
        version: str = "",
        timeout_s: float = 60.0,
    ) -> None:
        self.module = client_module(protocol)
        self.protocol = protocol
        self.model = model
        self.output = output
        self.version = version
        self.timeout_s = timeout_s
        self.client = connect(url, protocol, timeout_s)

    def run(self, feeds: Feeds) -> np.ndarray:
        from tritonclient.utils import InferenceServerException, np_to_triton_dtype

        inputs = []
        for name, value in feeds.items():
            array = np.ascontiguousarray(value)
            if array.ndim == 1:
                array = array.reshape(-1, 1)
            tensor = self.module.InferInput(
                name, list(array.shape), np_to_triton_dtype(array.dtype)
            )
            tensor.set_data_from_numpy(array)
            inputs.append(tensor)
        outputs = [self.module.InferRequestedOutput(self.output)]
        kwargs: dict[str, Any] = {"model_version": self.version, "outputs": outputs}
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.timeout_s
        try:
            result = self.client.infer(self.model, inputs, **kwargs)
        except InferenceServerException as e:
            raise as_inference_error(e, self.model) from None
        except (OSError, HTTPException) as e:  # the HTTP client's connection errors
            raise ServeError(f"cannot reach Triton for {self.model!r}: {e}") from None
        return np.asarray(result.as_numpy(self.output))

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.close()
