"""`gendeploy tune`: the search space, the choice under a budget, the new version, and a real
Model Analyzer run on a locked private tritonserver."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from serve_support import TINY_CONDITIONAL, build_export, make_checkpoint, require_tritonserver

from gendeploy.serve.admin import ADMIN_HEADER, LOCKED_APIS
from gendeploy.serve.repo import parse_config, write_repo
from gendeploy.tune.analyzer import Constraints, Measurement
from gendeploy.tune.search import Goal
from gendeploy.tune.space import Block, Candidate, Objective, Protocol, SearchSpace
from gendeploy.tune.version import write_tuned_version

START = Candidate(1, 0, 8, 2000, 0, Protocol.http)


def m(c: Candidate, throughput: float, p99: float) -> Measurement:
    return Measurement(c, 4, throughput, p99, p99, p99 / 2, 0.1, 0.2, 0.0, 0.1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    checkpoint = make_checkpoint(TINY_CONDITIONAL, root / "c.pt")
    write_repo(build_export(checkpoint, root / "export", "tinyc"), root / "repo")
    return root / "repo"


def test_quick_steps_reach_only_adjacent_values_and_valid_preferred_sizes() -> None:
    space = SearchSpace(max_batch_sizes=(1, 4, 8), preferred_batches=(0, 4, 8)).including(START)
    (block,) = space.step(START, "max_batch_size")
    assert block.max_batch_sizes == (4, 8) and block.instances == (1,)
    preferred = space.step(Candidate(1, 0, 4, 2000, 4), "preferred_batch")
    assert [b.preferred_batch for b in preferred] == [0, 4]  # 8 > max batch 4: not servable
    assert all(c.preferred_batch <= c.max_batch_size for b in space.grid() for c in b.candidates())
    assert len({c for b in space.grid() for c in b.candidates()}) == space.size()


def test_a_block_less_what_was_measured_stays_a_product() -> None:
    block = Block(Protocol.grpc, 0, (1, 2, 3), (1,), (8,), (0,))
    left = block.without({Candidate(2, 1, 8, 0, 0, Protocol.grpc)})
    assert left is not None and left.instances == (1, 3)
    corner = Block(Protocol.http, 0, (1, 2), (1, 2), (8,), (0,))
    assert corner.without({Candidate(1, 1, 8, 0, 0)}) is corner  # not a product: ask for all
    assert block.without(set(block.candidates())) is None
    smaller = Block(Protocol.http, 0, (1, 2), (1,), (8,), (0,)).without({Candidate(1, 1, 8, 0, 0)})
    assert smaller is not None and smaller.candidates() == [Candidate(2, 1, 8, 0, 0)]


def test_model_analyzer_gets_every_axis_as_a_swept_list() -> None:
    params = Block(Protocol.http, 4, (1, 2), (1, 2), (8,), (0, 500)).model_config_parameters(
        "KIND_CPU"
    )
    assert params["instance_group"] == [
        [{"kind": "KIND_CPU", "count": 1}],
        [{"kind": "KIND_CPU", "count": 2}],
    ]
    assert params["dynamic_batching"] == {
        "max_queue_delay_microseconds": [0, 500],
        "preferred_batch_size": [[4]],
    }
    assert params["parameters"] == {"intra_op_threads": {"string_value": ["1", "2"]}}


def test_the_choice_is_most_throughput_within_the_p99_budget_or_least_p99_above_a_floor() -> None:
    a, b, c = (Candidate(i, 1, 8, 0, 0) for i in (1, 2, 3))
    ms = [m(a, 500, 4.0), m(b, 800, 9.0), m(c, 700, 6.0)]
    assert Goal(Objective.throughput, Constraints()).best(ms).candidate == b
    assert Goal(Objective.throughput, Constraints(p99_budget_ms=7)).best(ms).candidate == c
    assert Goal(Objective.latency, Constraints(min_throughput=600)).best(ms).candidate == c
    assert Goal(Objective.throughput, Constraints(p99_budget_ms=1)).best(ms) is None
    goal = Goal(Objective.throughput, Constraints(p99_budget_ms=5))
    assert goal.key(ms[0]) > goal.key(ms[2]) > goal.key(ms[1])  # infeasible: closer is better


def test_the_winner_is_a_new_version_and_the_served_one_is_untouched(
    repo: Path, tmp_path: Path
) -> None:
    import shutil

    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    before = {p.name: p.read_bytes() for p in (copy / "tinyc" / "1").iterdir() if p.is_file()}
    winner = Candidate(2, 1, 4, 250, 4, Protocol.grpc)
    written = write_tuned_version(copy, "tinyc", winner, {"winner": "x"})
    assert written.version == 2 and written.new
    assert {p.name: p.read_bytes() for p in (copy / "tinyc" / "1").iterdir() if p.is_file()} == (
        before
    )
    assert json.loads((copy / "tinyc" / "2" / "tuning.json").read_text()) == {"winner": "x"}
    config = parse_config((copy / "tinyc" / "config.pbtxt").read_text())
    assert [g.count for g in config.instance_group] == [2]
    assert config.max_batch_size == 4
    assert config.dynamic_batching.max_queue_delay_microseconds == 250
    assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert config.parameters["intra_op_threads"].string_value == "1"


def _perf_analyzer() -> Path:
    from gendeploy.bench.served import find_perf_analyzer

    require_tritonserver()
    exe = find_perf_analyzer()
    if exe is None:
        pytest.skip("perf_analyzer not found (scripts/get_perf_analyzer.sh fetches it)")
    pytest.importorskip("model_analyzer", reason="Model Analyzer not installed (gendeploy[tune])")
    return exe


@pytest.mark.triton
@pytest.mark.slow
def test_tune_measures_on_a_locked_server_writes_the_winner_and_a_report(
    repo: Path, tmp_path: Path
) -> None:
    import shutil

    from gendeploy.tune.api import TuneOptions, tune
    from gendeploy.tune.space import SearchMode

    _perf_analyzer()
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    space = SearchSpace((1,), (1,), (4,), (0, 500), (0,), (Protocol.http,))
    options = TuneOptions(
        model="tinyc",
        search=SearchMode.exhaustive,
        space=space,
        window_ms=500,
        stability_pct=60,
        baseline=False,
    )
    report = tune(copy, options, tmp_path / "out", say=lambda _: None)
    asked = {Candidate(1, 1, 4, d, 0) for d in (0, 500)}
    got = {Candidate.from_dict(x["candidate"]) for x in report.measurements}
    failed = {Candidate.from_dict(x["candidate"]) for x in report.failed}
    assert asked <= got | failed and got & asked  # each asked for: measured, or failed with why
    assert all(x["throughput"] > 0 and x["p99_ms"] > 0 for x in report.measurements)
    assert report.winner is not None
    for name in ("tune.md", "tune.png", "tune.json"):
        assert (tmp_path / "out" / name).stat().st_size > 0
    assert "gendeploy tune" in (tmp_path / "out" / "tune.md").read_text()
    winner = Candidate.from_dict(report.winner["candidate"])
    config = parse_config((copy / "tinyc" / "config.pbtxt").read_text())
    assert report.written == f"{copy / 'tinyc'}/2"
    assert config.dynamic_batching.max_queue_delay_microseconds == winner.queue_delay_us
    assert config.parameters["intra_op_threads"].string_value == "1"
    # the tuning server's config: loopback only, every management API behind the run's key
    config_text = next((tmp_path / "out" / "work" / "analyzer-http").glob("config-*.yaml"))
    text = config_text.read_text()
    assert f"{','.join(LOCKED_APIS)}:{ADMIN_HEADER}=" in text and "0.0.0.0" not in text
    assert oct(config_text.stat().st_mode & 0o777) == "0o600"


@pytest.mark.triton
@pytest.mark.slow
def test_model_analyzer_without_the_key_cannot_load_on_the_tuning_server(
    repo: Path, tmp_path: Path
) -> None:
    """The lock is real: Model Analyzer's own client, run without gendeploy's key, is refused."""
    import yaml

    from gendeploy.serve.admin import new_key
    from gendeploy.serve.server import free_port
    from gendeploy.serve.tritonserver import find_tritonserver
    from gendeploy.tune.analyzer import AnalyzerRun
    from gendeploy.tune.api import prepare_repo

    exe = _perf_analyzer()
    work = tmp_path / "work"
    work.mkdir()
    (work / "input.json").write_text(
        json.dumps(
            {
                "data": [
                    {
                        "seed": {"content": [1], "shape": [1]},
                        "labels": {"content": [0], "shape": [1]},
                    }
                ]
            }
        )
    )
    run = AnalyzerRun(
        work=work, model="tinyc", repo=prepare_repo(repo, "tinyc", work),
        input_data=work / "input.json", perf_analyzer=exe, tritonserver=find_tritonserver(),
        ports=(free_port(), free_port(), free_port()), admin_key=new_key(),
        shm_prefix="gendeploy_tune_test_", instance_kind="KIND_CPU", concurrencies=(1,),
        objective=Objective.throughput, constraints=Constraints(), window_ms=300,
    )  # fmt: skip
    block = Block.of(Candidate(1, 1, 4, 0, 0))
    run.workspace(Protocol.http).mkdir()
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(run.config(block)))
    done = subprocess.run(
        [sys.executable, "-m", "model_analyzer.entrypoint", "profile", "-f", str(config)],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, check=False,
    )  # fmt: skip
    log = done.stdout + done.stderr
    refused = [line for line in log.splitlines() if "load failed" in line]
    assert refused and all("restricted" in line.lower() for line in refused), log[-2000:]
    assert "Profiling tinyc_config" not in log  # nothing loaded, so nothing was measured
