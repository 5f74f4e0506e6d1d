"""What ``gendeploy tune`` searches: a served configuration (:class:`Candidate`), the values each
of its axes may take (:class:`SearchSpace`), and the blocks Model Analyzer measures in one run.

Model Analyzer's manual brute search measures the cartesian product of the lists it is given, so
every request to it is a :class:`Block`: one protocol and one preferred batch size, and lists for
the other axes. The quick search asks for one axis's neighbours at a time (a block that varies
one list); the exhaustive search asks for whole products.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

from gendeploy.errors import UsageError
from gendeploy.protocol import Protocol


class Objective(str, Enum):
    """Model Analyzer's two objectives: most throughput, or least p99 latency."""

    throughput = "throughput"
    latency = "latency"


class SearchMode(str, Enum):
    quick = "quick"  # coordinate hill climbing from the repository's own config
    exhaustive = "exhaustive"  # every combination of the axes' values


AXES = ("instances", "max_batch_size", "queue_delay_us", "preferred_batch", "threads", "protocol")
# the SearchSpace ladder of each ordered axis
LADDERS = {
    "instances": "instances",
    "threads": "threads",
    "max_batch_size": "max_batch_sizes",
    "queue_delay_us": "queue_delays_us",
    "preferred_batch": "preferred_batches",
}


@dataclass(frozen=True, order=True)
class Candidate:
    """One served configuration of the python-backend model, and the protocol clients use."""

    instances: int
    threads: int  # the model's intra_op_threads (engine threads per instance); 0: CPUs / instances
    max_batch_size: int
    queue_delay_us: int
    preferred_batch: int  # dynamic batching's preferred batch size; 0: none
    protocol: Protocol = Protocol.http

    def label(self) -> str:
        preferred = f" pref {self.preferred_batch}" if self.preferred_batch else ""
        threads = f"{self.threads}t" if self.threads else "auto-threads"
        return (
            f"{self.instances}x{threads} mb{self.max_batch_size} "
            f"{self.queue_delay_us}us{preferred} {self.protocol.value}"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "threads": self.threads,
            "max_batch_size": self.max_batch_size,
            "queue_delay_us": self.queue_delay_us,
            "preferred_batch": self.preferred_batch,
            "protocol": self.protocol.value,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Candidate:
        return cls(**{**data, "protocol": Protocol(data["protocol"])})


def candidate_from_config(config: Any, protocol: Protocol) -> Candidate:
    """The candidate a Triton ``ModelConfig`` (protobuf) serves."""
    threads = (
        config.parameters["intra_op_threads"].string_value
        if "intra_op_threads" in (config.parameters)
        else "0"
    )
    preferred = list(config.dynamic_batching.preferred_batch_size)
    return Candidate(
        instances=sum(group.count or 1 for group in config.instance_group) or 1,
        threads=int(threads or 0),
        max_batch_size=int(config.max_batch_size),
        queue_delay_us=int(config.dynamic_batching.max_queue_delay_microseconds),
        preferred_batch=int(preferred[0]) if preferred else 0,
        protocol=protocol,
    )


@dataclass(frozen=True)
class Block:
    """Candidates Model Analyzer measures in one run: the product of the lists."""

    protocol: Protocol
    preferred_batch: int
    instances: tuple[int, ...]
    threads: tuple[int, ...]
    max_batch_sizes: tuple[int, ...]
    queue_delays_us: tuple[int, ...]

    def candidates(self) -> list[Candidate]:
        return [
            Candidate(i, t, m, d, self.preferred_batch, self.protocol)
            for i, t, m, d in itertools.product(
                self.instances, self.threads, self.max_batch_sizes, self.queue_delays_us
            )
        ]

    def model_config_parameters(self, kind: str) -> dict[str, Any]:
        """Model Analyzer's ``model_config_parameters``: every list is swept (its manual brute
        search), everything else is set as given."""
        batching: dict[str, Any] = {"max_queue_delay_microseconds": list(self.queue_delays_us)}
        if self.preferred_batch:
            batching["preferred_batch_size"] = [[self.preferred_batch]]
        return {
            "max_batch_size": list(self.max_batch_sizes),
            "instance_group": [[{"kind": kind, "count": n}] for n in self.instances],
            "dynamic_batching": batching,
            "parameters": {"intra_op_threads": {"string_value": [str(t) for t in self.threads]}},
        }

    @classmethod
    def of(cls, candidate: Candidate) -> Block:
        c = candidate
        return cls(
            c.protocol,
            c.preferred_batch,
            (c.instances,),
            (c.threads,),
            (c.max_batch_size,),
            (c.queue_delay_us,),
        )

    def without(self, measured: set[Candidate]) -> Block | None:
        """This block less what is measured already, when that leaves a product (else itself);
        None when nothing is left."""
        left = [c for c in self.candidates() if c not in measured]
        if not left:
            return None
        smaller = replace(
            self,
            instances=tuple(sorted({c.instances for c in left})),
            threads=tuple(sorted({c.threads for c in left})),
            max_batch_sizes=tuple(sorted({c.max_batch_size for c in left})),
            queue_delays_us=tuple(sorted({c.queue_delay_us for c in left})),
        )
        return smaller if len(smaller.candidates()) == len(left) else self


def _ladder(values: tuple[int, ...], name: str, minimum: int) -> tuple[int, ...]:
    if not values:
        raise UsageError(f"--{name} needs at least one value")
    if min(values) < minimum:
        raise UsageError(f"--{name} values must be >= {minimum}, got {min(values)}")
    return tuple(sorted(set(values)))


@dataclass(frozen=True)
class SearchSpace:
    """The values each axis may take (sorted; the quick search steps to adjacent ones)."""

    instances: tuple[int, ...] = (1, 2, 3)
    threads: tuple[int, ...] = (1, 2)
    max_batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    queue_delays_us: tuple[int, ...] = (0, 250, 1000, 2000)
    preferred_batches: tuple[int, ...] = (0, 4)
    protocols: tuple[Protocol, ...] = (Protocol.http, Protocol.grpc)

    def __post_init__(self) -> None:
        object.__setattr__(self, "instances", _ladder(self.instances, "instances", 1))
        object.__setattr__(self, "threads", _ladder(self.threads, "threads", 0))
        object.__setattr__(
            self, "max_batch_sizes", _ladder(self.max_batch_sizes, "max-batch-sizes", 1)
        )
        object.__setattr__(
            self, "queue_delays_us", _ladder(self.queue_delays_us, "queue-delays-us", 0)
        )
        object.__setattr__(
            self, "preferred_batches", _ladder(self.preferred_batches, "preferred-batches", 0)
        )
        if not self.protocols:
            raise UsageError("--protocols needs http, grpc or both")
        object.__setattr__(self, "protocols", tuple(dict.fromkeys(self.protocols)))

    def including(self, c: Candidate) -> SearchSpace:
        """This space with ``c``'s values added (the starting point must be on every ladder)."""
        return SearchSpace(
            (*self.instances, c.instances),
            (*self.threads, c.threads),
            (*self.max_batch_sizes, c.max_batch_size),
            (*self.queue_delays_us, c.queue_delay_us),
            (*self.preferred_batches, c.preferred_batch),
            (*self.protocols, c.protocol) if c.protocol not in self.protocols else self.protocols,
        )

    def capped(self, max_batch: int) -> SearchSpace:
        """Max batch sizes above the export's own maximum are not servable: drop them."""
        sizes = tuple(m for m in self.max_batch_sizes if m <= max_batch) or (max_batch,)
        preferred = tuple(p for p in self.preferred_batches if p <= max_batch) or (0,)
        return replace(self, max_batch_sizes=sizes, preferred_batches=preferred)

    def valid(self, c: Candidate) -> bool:
        return c.preferred_batch <= c.max_batch_size

    def grid(self) -> list[Block]:
        """The exhaustive search: every valid combination, as blocks."""
        blocks = []
        for protocol, preferred in itertools.product(self.protocols, self.preferred_batches):
            sizes = tuple(m for m in self.max_batch_sizes if m >= preferred)
            if sizes:
                blocks.append(
                    Block(
                        protocol,
                        preferred,
                        self.instances,
                        self.threads,
                        sizes,
                        self.queue_delays_us,
                    )
                )
        return blocks

    def size(self) -> int:
        return sum(len(b.candidates()) for b in self.grid())

    def step(self, c: Candidate, axis: str) -> list[Block]:
        """The blocks holding ``c``'s valid neighbours along ``axis`` (the adjacent values)."""

        def near(values: tuple[Any, ...], value: Any) -> tuple[Any, ...]:
            i = values.index(value)
            return tuple(values[max(i - 1, 0) : i + 2])

        base = Block.of(c)
        if axis == "instances":
            blocks = [replace(base, instances=near(self.instances, c.instances))]
        elif axis == "threads":
            blocks = [replace(base, threads=near(self.threads, c.threads))]
        elif axis == "max_batch_size":
            sizes = near(self.max_batch_sizes, c.max_batch_size)
            sizes = tuple(m for m in sizes if m >= c.preferred_batch)
            blocks = [replace(base, max_batch_sizes=sizes)]
        elif axis == "queue_delay_us":
            blocks = [replace(base, queue_delays_us=near(self.queue_delays_us, c.queue_delay_us))]
        elif axis == "preferred_batch":
            blocks = [
                replace(base, preferred_batch=p)
                for p in near(self.preferred_batches, c.preferred_batch)
                if p <= c.max_batch_size
            ]
        elif axis == "protocol":
            blocks = [replace(base, protocol=p) for p in self.protocols]
        else:
            raise ValueError(f"unknown axis {axis!r}")
        return blocks

    def beyond(self, c: Candidate, neighbour: Candidate, axis: str) -> Candidate | None:
        """The next value past ``c``'s ``neighbour`` on ``axis``, away from ``c`` (None at the
        end of the ladder, on an unordered axis, or where it is not a valid configuration)."""
        if axis not in LADDERS:
            return None
        ladder = getattr(self, LADDERS[axis])
        here, there = ladder.index(getattr(c, axis)), ladder.index(getattr(neighbour, axis))
        past = there + (there > here) - (there < here)
        if past == there or not 0 <= past < len(ladder):
            return None
        candidate = replace(neighbour, **{axis: ladder[past]})
        return candidate if self.valid(candidate) else None
