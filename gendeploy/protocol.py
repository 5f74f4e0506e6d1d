"""How a client speaks to the server: the choice the CLI, the Triton runner, serve and tune share.

No numpy here: the CLI shows the choices without importing it.
"""

from __future__ import annotations

from enum import Enum


class Protocol(str, Enum):
    http = "http"
    grpc = "grpc"
