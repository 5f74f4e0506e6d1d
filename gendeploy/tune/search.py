"""The two searches and the choice, over measurements Model Analyzer makes.

- **quick**: coordinate hill climbing from the repository's own configuration (as Model Analyzer's
  quick mode climbs instance count and max batch size), over every axis of :mod:`tune.space`: the
  adjacent values of one axis are measured, the best configuration so far becomes the next
  starting point, until a whole round over the axes improves nothing or ``max_configs`` is spent.
  A neighbour that could not be measured (it failed to load, or perf_analyzer found no stable
  window) does not end its direction: the next value past it is measured instead.
- **exhaustive**: every valid combination of the axes' values.

The choice is Model Analyzer's: among measurements that meet the constraints (a p99 budget, a
throughput floor), the most throughput or the least p99. A configuration counts by its best
measurement over the concurrencies measured, as in Model Analyzer's result tables.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from gendeploy.errors import TuneError
from gendeploy.tune.analyzer import Constraints, Measurement
from gendeploy.tune.space import AXES, Block, Candidate, Objective, SearchSpace


@dataclass(frozen=True)
class Goal:
    objective: Objective
    constraints: Constraints

    def feasible(self, m: Measurement) -> bool:
        budget, floor = self.constraints.p99_budget_ms, self.constraints.min_throughput
        return (budget is None or m.p99_ms <= budget) and (floor is None or m.throughput >= floor)

    def violation(self, m: Measurement) -> float:
        """How far ``m`` misses the constraints (0 when it meets them), as a fraction."""
        budget, floor = self.constraints.p99_budget_ms, self.constraints.min_throughput
        over = m.p99_ms / budget - 1 if budget else 0.0
        under = floor / m.throughput - 1 if floor and m.throughput > 0 else 0.0
        return max(over, under, 0.0) if (floor is None or m.throughput > 0) else float("inf")

    def key(self, m: Measurement) -> tuple[bool, float, float]:
        """Larger is better: feasible first, then the objective (ties: the other metric)."""
        if not self.feasible(m):
            return (False, -self.violation(m), 0.0)
        if self.objective is Objective.throughput:
            return (True, m.throughput, -m.p99_ms)
        return (True, -m.p99_ms, m.throughput)

    def best(self, measurements: Iterable[Measurement]) -> Measurement | None:
        """The winning measurement: the best that meets the constraints (None if none does)."""
        feasible = [m for m in measurements if self.feasible(m)]
        return max(feasible, key=self.key) if feasible else None


@dataclass
class Trials:
    """What was asked for and what came back, in order."""

    measurements: dict[Candidate, list[Measurement]] = field(default_factory=dict)
    failed: dict[Candidate, str] = field(default_factory=dict)
    order: list[Candidate] = field(default_factory=list)

    def tried(self) -> set[Candidate]:
        return set(self.measurements) | set(self.failed)

    def all(self) -> list[Measurement]:
        return [m for c in self.order for m in self.measurements.get(c, [])]

    def score(self, goal: Goal, c: Candidate) -> tuple[bool, float, float] | None:
        ms = self.measurements.get(c)
        return max(goal.key(m) for m in ms) if ms else None


Measure = Callable[[Block], None]  # measures a block, recording into the Trials


def exhaustive_search(space: SearchSpace, trials: Trials, measure: Measure) -> None:
    for block in space.grid():
        left = block.without(trials.tried())
        if left is not None:
            measure(left)


def quick_search(
    space: SearchSpace,
    start: Candidate,
    goal: Goal,
    trials: Trials,
    measure: Measure,
    max_configs: int,
    say: Callable[[str], None] = print,
) -> Candidate:
    """Climb from ``start``; returns where the climb ended."""
    if start not in trials.tried():
        measure(Block.of(start))
    if trials.score(goal, start) is None:
        why = trials.failed.get(start, "no measurement")
        raise TuneError(f"the repository's own configuration could not be measured: {why}")

    def measure_all(blocks: list[Block]) -> bool:
        """Measures what is new in ``blocks``; False when ``max_configs`` stops the climb."""
        for block in blocks:
            left = block.without(trials.tried())
            if left is None:
                continue
            if len(trials.tried()) + len(left.candidates()) > max_configs:
                say(f"stopping: --max-configs {max_configs} reached")
                return False
            measure(left)
        return True

    current, rounds = start, 0
    improved = True
    while improved:
        improved, rounds = False, rounds + 1
        for axis in AXES:
            if axis == "protocol" and len(space.protocols) < 2:
                continue
            steps = space.step(current, axis)
            if not measure_all(steps):
                return current
            # a neighbour that could not be measured does not end its direction: the value
            # past it is measured instead
            failed = [c for b in steps for c in b.candidates() if trials.score(goal, c) is None]
            past = [p for c in failed if (p := space.beyond(current, c, axis))]
            for p in past:
                if p not in trials.tried():
                    say(f"round {rounds}, {axis}: trying {p.label()}, past one not measured")
            past_blocks = [Block.of(p) for p in past]
            if not measure_all(past_blocks):
                return current
            best = _best_candidate(goal, trials, current, steps + past_blocks)
            if best != current:
                say(f"round {rounds}, {axis}: better at {best.label()}")
                current, improved = best, True
    return current


def _best_candidate(
    goal: Goal, trials: Trials, current: Candidate, blocks: list[Block]
) -> Candidate:
    best, best_score = current, trials.score(goal, current)
    for block in blocks:
        for c in block.candidates():
            score = trials.score(goal, c)
            if score is not None and (best_score is None or score > best_score):
                best, best_score = c, score
    return best
