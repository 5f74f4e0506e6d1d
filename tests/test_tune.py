"""`gendeploy tune`: the search space, the choice under a budget, the new version, and a real
Model Analyzer run on a locked private tritonserver."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from serve_support import TINY_CONDITIONAL, build_export, make_checkpoint, require_tritonserver

from gendeploy.errors import TuneError
from gendeploy.serve.admin import ADMIN_HEADER, LOCKED_APIS
from gendeploy.serve.repo import ModelPlan, config_text, parse_config, write_model, write_repo
from gendeploy.tune.analyzer import PA_ATTEMPTS, Constraints, Measurement
from gendeploy.tune.report import Baseline, Measured, TuneReport, markdown, write_report
from gendeploy.tune.search import Goal, Trials, quick_search
from gendeploy.tune.space import Block, Candidate, Objective, Protocol, SearchSpace
from gendeploy.tune.version import plan_tuned, write_tuned

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


def _files(version: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in version.iterdir() if p.is_file()}


def _config(repo: Path, model: str) -> Any:
    return parse_config((repo / model / "config.pbtxt").read_text())


def test_the_winner_is_a_new_version_of_the_model_and_its_onnx_sibling(
    repo: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    before = {m: _files(copy / m / "1") for m in ("tinyc", "tinyc_onnx")}
    uint8 = (copy / "tinyc_uint8" / "config.pbtxt").read_text()
    winner = Candidate(2, 1, 4, 250, 4, Protocol.grpc)
    written = write_tuned(copy, plan_tuned(copy, "tinyc", winner), {"winner": "x"})
    assert [(w.name, w.version, w.new) for w in written] == [
        ("tinyc", 2, True),
        ("tinyc_onnx", 2, True),
    ]
    for model, files in before.items():
        assert _files(copy / model / "1") == files  # the served version is untouched
        assert json.loads((copy / model / "2" / "tuning.json").read_text()) == {"winner": "x"}
        assert _files(copy / model / "2").keys() == {*files, "tuning.json"}
        config = _config(copy, model)
        assert [g.count for g in config.instance_group] == [2]
        assert config.max_batch_size == 4
        assert config.dynamic_batching.max_queue_delay_microseconds == 250
        assert list(config.dynamic_batching.preferred_batch_size) == [4]
    assert _config(copy, "tinyc").parameters["intra_op_threads"].string_value == "1"
    onnx = _config(copy, "tinyc_onnx")
    assert onnx.platform == "onnxruntime_onnx"
    assert onnx.parameters["intra_op_thread_count"].string_value == "1"  # ORT backend's name
    assert (copy / "tinyc_uint8" / "config.pbtxt").read_text() == uint8  # another model


def test_ort_default_threads_leave_the_onnx_parameter_out_and_the_own_config_writes_nothing(
    repo: Path,
) -> None:
    own = plan_tuned(repo, "tinyc", Candidate.from_dict({**START.to_dict(), "max_batch_size": 8}))
    start = own[0].old
    from gendeploy.tune.space import candidate_from_config

    same = plan_tuned(repo, "tinyc", candidate_from_config(start, Protocol.http))
    assert [t.model for t in same] == ["tinyc", "tinyc_onnx"]
    assert not any(t.changed for t in same)  # the repository's own config won: nothing to write
    other = plan_tuned(repo, "tinyc", Candidate(1, 0, 4, 0, 0))
    assert "intra_op_thread_count" not in other[1].new.parameters
    assert other[1].changed and other[1].new.max_batch_size == 4


def test_a_tensorrt_sibling_gets_what_tensorrt_can_take_and_the_report_says_what_not(
    repo: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    from tritonclient.grpc import model_config_pb2

    trt = model_config_pb2.ModelConfig()
    trt.CopyFrom(_config(copy, "tinyc_onnx"))
    trt.name, trt.platform, trt.max_batch_size = "tinyc_trt", "tensorrt_plan", 4  # profile max 4
    del trt.instance_group[:]
    trt.instance_group.add(kind=model_config_pb2.ModelInstanceGroup.KIND_GPU, count=1)
    (tmp_path / "model.plan").write_bytes(b"engine")
    write_model(ModelPlan("tinyc_trt", trt, {"model.plan": tmp_path / "model.plan"}), copy, 2)
    tuned = plan_tuned(copy, "tinyc", Candidate(3, 2, 8, 500, 8))
    by_model = {t.model: t for t in tuned}
    assert set(by_model) == {"tinyc", "tinyc_onnx", "tinyc_trt"}
    engine = by_model["tinyc_trt"].new
    assert engine.max_batch_size == 4 and list(engine.dynamic_batching.preferred_batch_size) == []
    assert [(g.kind, g.count) for g in engine.instance_group] == [
        (model_config_pb2.ModelInstanceGroup.KIND_GPU, 3)
    ]
    assert engine.dynamic_batching.max_queue_delay_microseconds == 500
    assert "intra_op_thread_count" not in engine.parameters
    notes = " ".join(by_model["tinyc_trt"].notes)
    for said in ("profile max", "preferred batch 8", "thread", "per GPU"):
        assert said in notes
    written = write_tuned(copy, tuned, {"winner": "x"})
    assert {w.name for w in written} == {"tinyc", "tinyc_onnx", "tinyc_trt"}
    assert _files(copy / "tinyc_trt" / "2")["model.plan"] == b"engine"
    assert config_text(_config(copy, "tinyc_trt")) == config_text(engine)


def _landscape(c: Candidate) -> float:
    """A deterministic throughput with one best point, separable by axis."""
    return (
        1000.0
        - 100 * (c.instances - 2) ** 2
        - 40 * (c.threads - 1) ** 2
        - 30 * abs({1: 0, 4: 2, 8: 3, 16: 4}[c.max_batch_size] - 3)
        - 0.05 * abs(c.queue_delay_us - 250)
        + (5 if c.preferred_batch == 4 else 0)
        + (8 if c.protocol is Protocol.grpc else 0)
    )


def _climb(
    space: SearchSpace, start: Candidate, max_configs: int, fail: set[Candidate] | None = None
) -> tuple[Candidate, Trials, list[Block], list[str]]:
    trials, blocks, said = Trials(), [], []

    def measure(block: Block) -> None:  # as tune.api's: every candidate of the block recorded
        blocks.append(block)
        for c in block.candidates():
            trials.order.append(c)
            if fail and c in fail:
                trials.failed[c] = "load failed"
            else:
                t = _landscape(c)
                trials.measurements[c] = [m(c, t, 4000 / t)]

    goal = Goal(Objective.throughput, Constraints())
    end = quick_search(space, start, goal, trials, measure, max_configs, said.append)
    return end, trials, blocks, said


def test_the_quick_search_climbs_axis_by_axis_to_the_best_configuration() -> None:
    space = SearchSpace(max_batch_sizes=(1, 4, 8, 16))
    start = Candidate(1, 0, 16, 2000, 0, Protocol.http)
    end, trials, blocks, said = _climb(space.including(start), start, max_configs=100)
    everything = [c for b in space.grid() for c in b.candidates()]
    assert end == max(everything, key=_landscape) == Candidate(2, 1, 8, 250, 4, Protocol.grpc)
    assert blocks[0] == Block.of(start)  # the repository's own config is measured first
    for block in blocks[1:]:  # each later block varies one axis, over adjacent values
        varied = [
            axis
            for axis in ("instances", "threads", "max_batch_sizes", "queue_delays_us")
            if len(getattr(block, axis)) > 1
        ]
        assert len(varied) <= 1
        for axis in varied:
            ladder = getattr(space.including(start), axis)
            values = getattr(block, axis)
            indices = [ladder.index(v) for v in values]  # a value and its two neighbours,
            assert max(indices) - min(indices) <= 2  # less what was measured already
    assert len(trials.tried()) < len(everything)  # it did not measure everything
    assert any("better at" in line for line in said)


def test_the_quick_search_stops_at_max_configs_and_keeps_the_best_so_far() -> None:
    space = SearchSpace()
    start = Candidate(1, 0, 16, 2000, 0, Protocol.http)
    end, trials, _, said = _climb(space.including(start), start, max_configs=6)
    assert len(trials.tried()) <= 6
    assert said[-1] == "stopping: --max-configs 6 reached"
    assert _landscape(end) == max(_landscape(c) for c in trials.measurements)


def test_the_quick_search_refuses_when_the_repository_config_cannot_be_measured() -> None:
    start = Candidate(1, 0, 8, 2000, 0)
    with pytest.raises(TuneError, match="own configuration could not be measured: load failed"):
        _climb(SearchSpace().including(start), start, 40, fail={start})


def test_a_failed_neighbour_is_recorded_and_the_climb_goes_on() -> None:
    space = SearchSpace(protocols=(Protocol.http,))
    start = Candidate(1, 0, 16, 2000, 0)
    bad = Candidate(2, 0, 16, 2000, 0)
    end, trials, _, _ = _climb(space.including(start), start, 100, fail={bad})
    assert trials.failed == {bad: "load failed"} and bad not in trials.measurements
    assert end.instances == 2 and end != bad  # reached through another path


def test_a_neighbour_that_could_not_be_measured_does_not_end_its_direction() -> None:
    """Only the queue delay varies: 1000 us fails, so the climb from 2000 us measures 250 us
    (past it), which is better, and goes on from there to 0 us (worse: it stays at 250)."""
    space = SearchSpace((1,), (0,), (16,), (0, 250, 1000, 2000), (0,), (Protocol.http,))
    start, bad = Candidate(1, 0, 16, 2000, 0), Candidate(1, 0, 16, 1000, 0)
    end, trials, blocks, said = _climb(space, start, 100, fail={bad})
    assert end == Candidate(1, 0, 16, 250, 0) and trials.failed == {bad: "load failed"}
    assert Block.of(end) in blocks and set(trials.measurements) == {
        start,
        end,
        Candidate(1, 0, 16, 0, 0),
    }
    assert f"round 1, queue_delay_us: trying {end.label()}, past one not measured" in said
    # nothing past the end of a ladder, nor on an unordered axis
    assert space.beyond(Candidate(1, 0, 16, 250, 0), Candidate(1, 0, 16, 0, 0), "protocol") is None
    assert space.beyond(end, Candidate(1, 0, 16, 0, 0), "queue_delay_us") is None
    assert space.beyond(end, bad, "queue_delay_us") == start


def _check_report_files(out: Path, command: str, measurements: int) -> None:
    """tune.md: one table row per measurement and the command in its reproduce block; a PNG."""
    text = (out / "tune.md").read_text()
    assert len([line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]) == (
        measurements
    )
    assert text.endswith(f"## Reproduce\n\n```\n{command}\n```\n")
    assert (out / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((out / "tune.json").read_text())["command"] == command


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
        window_ms=1000,  # CI's machine is shared: second-long windows, that need only agree
        stability_pct=100,  # within 2x
        max_trials=10,
        baseline=False,
    )
    report = tune(copy, options, tmp_path / "out", say=lambda _: None)
    asked = {Candidate(1, 1, 4, d, 0) for d in (0, 500)}
    got = {x.measurement.candidate for x in report.measurements}
    failed = {x.candidate for x in report.failed}
    # each asked for: measured, or failed with why
    assert asked <= got | failed and got & asked, report.failed
    assert all(
        x.measurement.throughput > 0 and x.measurement.p99_ms > 0 for x in report.measurements
    )
    assert report.winner is not None
    _check_report_files(tmp_path / "out", report.command, len(report.measurements))
    assert re.fullmatch(r"\d+\.\d+\.\d+ \(.*\)", report.versions["tritonserver"])  # its log
    winner = report.winner.measurement.candidate
    if winner not in asked:  # the repository's own configuration won (measured here too)
        assert report.written == [] and not (copy / "tinyc" / "2").exists()
        return  # writing a winner is proven by the tests above on fixed measurements
    assert report.written == [f"{copy / 'tinyc'}/2", f"{copy / 'tinyc_onnx'}/2"]
    for model in ("tinyc", "tinyc_onnx"):  # the NGC sibling gets the winner too
        config = _config(copy, model)
        assert config.dynamic_batching.max_queue_delay_microseconds == winner.queue_delay_us
    assert _config(copy, "tinyc").parameters["intra_op_threads"].string_value == "1"
    assert _config(copy, "tinyc_onnx").parameters["intra_op_thread_count"].string_value == "1"
    assert not (tmp_path / "out" / "work" / "analyzer-http" / "output_models").exists()
    # the tuning server's config: loopback only, every management API behind the run's key
    config_text = next((tmp_path / "out" / "work" / "analyzer-http").glob("config-*.yaml"))
    text = config_text.read_text()
    assert f"{','.join(LOCKED_APIS)}:{ADMIN_HEADER}=" in text and "0.0.0.0" not in text
    # a measurement that finds no stable window is run again with longer windows, not dropped
    assert f"perf_analyzer_max_auto_adjusts: {PA_ATTEMPTS}" in text and PA_ATTEMPTS > 1
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
        objective=Objective.throughput, window_ms=300,
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


def test_a_variant_without_a_preferred_batch_size_gets_none_from_the_prepared_config(
    repo: Path, tmp_path: Path
) -> None:
    """Model Analyzer merges a variant into the base config key by key (its own function,
    used here): the prepared base has no preferred size, so preferred 0 is really sent."""
    from google.protobuf import json_format
    from model_analyzer.config.generate.base_model_config_generator import (
        BaseModelConfigGenerator,
    )

    from gendeploy.tune.api import prepare_repo

    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    config = _config(copy, "tinyc")
    config.dynamic_batching.preferred_batch_size.append(4)
    (copy / "tinyc" / "config.pbtxt").write_text(config_text(config))
    prepared = prepare_repo(copy, "tinyc", tmp_path / "work")

    def merged(base: Any, preferred: int) -> dict[str, Any]:
        d = json_format.MessageToDict(base, preserving_proto_field_name=True)
        sweep = Block.of(Candidate(1, 1, 8, 0, preferred)).model_config_parameters("KIND_CPU")
        combo = {k: v[0] for k, v in sweep["dynamic_batching"].items()}  # one point of it
        BaseModelConfigGenerator._apply_value_to_dict("dynamic_batching", combo, d)
        return dict(d["dynamic_batching"])

    base = _config(prepared, "tinyc")
    assert "preferred_batch_size" not in merged(base, 0)
    assert merged(base, 4)["preferred_batch_size"] == [4]
    assert merged(config, 0)["preferred_batch_size"] == [4]  # the unprepared base would keep it
    assert (prepared / "tinyc" / "1").resolve() == (copy / "tinyc" / "1").resolve()


def test_max_batch_sizes_are_capped_by_the_export_not_the_current_config(
    repo: Path, tmp_path: Path
) -> None:
    from gendeploy.tune.api import export_max_batch

    copy = tmp_path / "repo"
    shutil.copytree(repo, copy)
    config = _config(copy, "tinyc")
    config.max_batch_size = 2  # e.g. an earlier tuning run's winner
    assert export_max_batch(copy / "tinyc" / "1", config) == 8  # the export's batch profile
    space = SearchSpace(max_batch_sizes=(1, 4, 8, 16), preferred_batches=(0, 4, 16))
    capped = space.capped(export_max_batch(copy / "tinyc" / "1", config))
    assert capped.max_batch_sizes == (1, 4, 8) and capped.preferred_batches == (0, 4)


def test_a_checkpoint_in_another_layout_is_one_line_naming_the_pinned_version(
    tmp_path: Path,
) -> None:
    from gendeploy.tune.analyzer import MODEL_ANALYZER_VERSION, read_measurements

    checkpoints = tmp_path / "checkpoints"
    checkpoints.mkdir()
    layout = {"ResultManager.results": {"_results": {"tinyc": {"k": [{"renamed": {}}, {}]}}}}
    (checkpoints / "0.ckpt").write_text(json.dumps(layout))
    with pytest.raises(TuneError) as e:
        read_measurements(tmp_path, "tinyc", Protocol.http)
    assert "\n" not in str(e.value)
    assert f"triton-model-analyzer=={MODEL_ANALYZER_VERSION}" in str(e.value)
    assert "_model_run_configs" in str(e.value)  # what was missing


def test_the_pinned_model_analyzer_is_the_one_pyproject_installs() -> None:
    from gendeploy.tune.analyzer import MODEL_ANALYZER_VERSION

    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    assert f'"triton-model-analyzer=={MODEL_ANALYZER_VERSION}"' in pyproject


def test_the_wrappers_refusals_reach_the_tuning_runs_problems(tmp_path: Path) -> None:
    """analyzer_main stops with a `gendeploy:` line (a SystemExit's text on stderr): it must
    come back as the reason, not vanish into the log."""
    from gendeploy.serve.admin import KEY_ENV
    from gendeploy.tune.analyzer import ANALYZER_MAIN, _follow

    env = {k: v for k, v in os.environ.items() if k != KEY_ENV}
    shown: list[str] = []
    process = subprocess.Popen(
        [sys.executable, "-m", ANALYZER_MAIN, "profile", "-f", "x.yaml"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
    )  # fmt: skip
    with (tmp_path / "log").open("wb") as log:
        problems = _follow(process, log, shown.append)
    assert process.wait(timeout=60) != 0
    assert problems == [f"gendeploy: set {KEY_ENV} to the tuning server's admin key"]
    assert shown == [f"  {problems[0]}"]


def _report(**changes: Any) -> TuneReport:
    a, b = Candidate(1, 1, 8, 0, 0), Candidate(2, 1, 8, 500, 0, Protocol.grpc)
    rows = [
        Measured(Measurement(c, conc, t, p, p, p / 2, 0.1, 0.2, 0.05, 0.1), True)
        for c, conc, t, p in ((a, 4, 500.0, 5.0), (a, 8, 600.0, 9.0), (b, 4, 450.0, 4.0))
    ]
    fields: dict[str, Any] = {
        "model": "tinyc", "repo": "r", "search": "quick", "objective": "throughput",
        "p99_budget_ms": 10.0, "min_throughput": None, "concurrencies": [4, 8],
        "start": a, "measurements": rows, "winner": rows[1],
        "baseline": Baseline(images_per_s=800.0, p50_ms=1.0, stable=True),
        "command": "gendeploy tune r --model tinyc --out 'tune dir'",
    }  # fmt: skip
    return TuneReport(**{**fields, **changes})


def test_the_report_has_a_row_per_measurement_the_ratio_at_concurrency_4_and_the_command(
    tmp_path: Path,
) -> None:
    report = _report()
    text = markdown(report)
    table = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
    assert len(table) == len(report.measurements) == 3
    assert "**winner**" in table[1] and "**winner**" not in table[0] + table[2]
    assert "```\ngendeploy tune r --model tinyc --out 'tune dir'\n```" in text
    assert "at concurrency 4, the winning configuration: **0.62x**" in text  # 500 / 800
    assert "missed" in text and "concurrency 8): 0.75x" in text  # the winner's own level
    paths = write_report(report, tmp_path / "out")
    assert [p.name for p in paths] == ["tune.json", "tune.md", "tune.png"]
    assert (tmp_path / "out" / "tune.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(paths[0].read_text())["schema_version"] == 2
    not_at_4 = markdown(_report(concurrencies=[8], measurements=[report.measurements[1]]))
    assert "concurrency 4 (the target's level): not measured" in not_at_4


def _tune_cli(
    *args: str | Path, env: dict[str, str] | None = None, prelude: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """`gendeploy tune ARGS` in a subprocess (``prelude`` runs before the CLI starts)."""
    entry = ["-m", "gendeploy"]
    if prelude:
        entry = ["-c", f"{prelude}; from gendeploy.cli import main; main()"]
    return subprocess.run(
        [sys.executable, *entry, "tune", *map(str, args)],
        capture_output=True, text=True, timeout=300, check=False, env={**os.environ, **(env or {})},
        cwd=cwd,
    )  # fmt: skip


def _tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` but the __pycache__ the python backend leaves when it serves."""
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in root.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }


BAD_INPUT = {
    # case: (args after the repo, extra env, prelude, exit code, what the one line says)
    "missing repo": ([], {}, "", 2, "does not exist; run `gendeploy repo"),
    "unknown model": (["--model", "nope"], {}, "", 2, "no model 'nope' in"),
    "non-python model": (["--model", "tinyc_onnx"], {}, "", 1, "onnxruntime_onnx backend"),
    "exhaustive over --max-configs": (
        ["--search", "exhaustive", "--max-configs", "3"], {}, "", 2, "over --max-configs 3",
    ),
    "no Model Analyzer": (
        [], {}, "import sys; sys.modules['model_analyzer'] = None", 1,
        "Model Analyzer is not installed",
    ),
    "another Model Analyzer": (
        [], {"PYTHONPATH": "FAKE"}, "", 1, "Model Analyzer 1.0 is installed",
    ),
    "no perf_analyzer": (
        [], {"GENDEPLOY_PERF_ANALYZER": "NONE"}, "", 1, "GENDEPLOY_PERF_ANALYZER=",
    ),
    "no tritonserver": (["--tritonserver", "NONE"], {}, "", 1, "tritonserver not found at"),
    "bad concurrency": (["--concurrency", "0"], {}, "", 2, "--concurrency needs levels >= 1"),
}  # fmt: skip


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_one_line_with_its_exit_code_and_nothing_is_written(
    case: str, repo: Path, tmp_path: Path
) -> None:
    args, env, prelude, code, said = BAD_INPUT[case]
    if "--model" not in args:
        args = ["--model", "tinyc", *args]
    fake = tmp_path / "fake"  # an installed Model Analyzer of another version
    (fake / "triton_model_analyzer-1.0.dist-info").mkdir(parents=True)
    (fake / "triton_model_analyzer-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: triton-model-analyzer\nVersion: 1.0\n"
    )
    env = {
        k: v.replace("FAKE", str(fake)).replace("NONE", str(tmp_path / "x")) for k, v in env.items()
    }
    args = [a.replace("NONE", str(tmp_path / "x")) for a in args]
    where = tmp_path / "missing" if case == "missing repo" else repo
    before = _tree(repo)
    done = _tune_cli(where, *args, "--out", tmp_path / "out", env=env, prelude=prelude)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and said in lines[0], done.stderr
    assert not (tmp_path / "out").exists() and _tree(repo) == before


def test_an_earlier_run_in_out_is_refused_without_force(repo: Path, tmp_path: Path) -> None:
    from gendeploy.tune.api import check_out, fresh_work

    out = tmp_path / "out"
    stale = out / "work" / "analyzer-http" / "checkpoints" / "0.ckpt"
    stale.parent.mkdir(parents=True)
    stale.write_text("{}")
    (out / "tune.md").write_text("earlier")
    done = _tune_cli(repo, "--model", "tinyc", "--out", out)
    assert done.returncode == 2 and "pass --force" in done.stderr
    assert stale.read_text() == "{}" and (out / "tune.md").read_text() == "earlier"
    check_out(out, force=True)
    work = fresh_work(out)  # what --force does before measuring: nothing of the earlier run
    assert list(work.iterdir()) == [] and not (out / "tune.md").exists()
    assert oct(work.stat().st_mode & 0o777) == "0o700"


def test_the_reproduce_command_parses_back_to_the_same_options(tmp_path: Path) -> None:
    import shlex

    import typer

    from gendeploy.cli import app
    from gendeploy.tune.api import TuneOptions, command_line
    from gendeploy.tune.space import SearchMode

    options = TuneOptions(
        model="tinyc", objective=Objective.latency, p99_budget_ms=12.5, min_throughput=300,
        concurrencies=(1, 4), search=SearchMode.exhaustive,
        space=SearchSpace((1, 2), (0, 1), (4,), (0, 500), (0,), (Protocol.grpc,)),
        max_configs=9, window_ms=700, stability_pct=20, max_trials=5, write=False,
        keep_versions=3, baseline=False, tritonserver=Path("/opt/t s/tritonserver"),
    )  # fmt: skip
    words = shlex.split(command_line(Path("my repo"), options, tmp_path / "o u t"))
    assert words[:3] == ["gendeploy", "tune", "my repo"]
    command = typer.main.get_command(app).commands["tune"]
    params = command.make_context("tune", words[2:]).params
    assert params == {
        "repo": Path("my repo"), "model": "tinyc", "objective": Objective.latency,
        "p99_budget_ms": 12.5, "min_throughput": 300.0, "concurrency": "1,4",
        "search": SearchMode.exhaustive, "instances": "1,2", "threads": "0,1",
        "max_batch_sizes": "4", "queue_delays_us": "0,500", "preferred_batches": "0",
        "protocols": "grpc", "max_configs": 9, "window_ms": 700, "stability_percentage": 20,
        "max_trials": 5, "out": tmp_path / "o u t", "force": False, "write": False,
        "keep_versions": 3, "baseline": False, "tritonserver": Path("/opt/t s/tritonserver"),
    }  # fmt: skip


@pytest.mark.triton
@pytest.mark.slow
def test_a_quick_search_over_grpc_that_meets_no_budget_reports_and_writes_nothing(
    repo: Path, tmp_path: Path
) -> None:
    """The real CLI: a quick climb over two axes (threads, queue delay) on gRPC, where Model
    Analyzer's gRPC client must send the key to load anything; nothing meets a 1 us p99."""
    _perf_analyzer()
    copy, out = tmp_path / "repo", tmp_path / "out"
    shutil.copytree(repo, copy)
    before = _tree(copy)
    args = [
        copy, "--model", "tinyc", "--search", "quick", "--protocols", "grpc",
        "--instances", "1", "--threads", "0,1", "--max-batch-sizes", "8",
        "--queue-delays-us", "0", "--preferred-batches", "0", "--concurrency", "1",
        "--max-configs", "3", "--window-ms", "1000", "--stability-percentage", "100",
        "--max-trials", "10", "--no-baseline", "--p99-budget-ms", "0.001", "--out", "out",
    ]  # fmt: skip
    done = _tune_cli(*args, cwd=tmp_path)  # a relative --out: Model Analyzer runs elsewhere
    assert done.returncode == 3, done.stdout[-3000:] + done.stderr
    assert "error: no configuration met the constraints" in done.stderr
    assert _tree(copy) == before  # nothing written to the repository
    report = json.loads((out / "tune.json").read_text())
    assert report["winner"] is None and report["written"] == []
    measured = {json.dumps(m["candidate"], sort_keys=True) for m in report["measurements"]}
    failed = {json.dumps(f["candidate"], sort_keys=True) for f in report["failed"]}
    assert json.dumps(report["start"], sort_keys=True) in measured
    # the start and its neighbours on the two axes, each measured or failed with the reason
    # (perf_analyzer gives up on a level on a busy machine)
    assert 2 <= len(measured | failed) <= 3 and all(f["why"] for f in report["failed"])
    assert {m["candidate"]["protocol"] for m in report["measurements"]} == {"grpc"}
    assert {m["candidate"]["threads"] for m in report["measurements"]} <= {0, 1}
    assert all(m["meets"] is False and m["p99_ms"] > 0.001 for m in report["measurements"])
    _check_report_files(out, report["command"], len(report["measurements"]))
    text = (out / "tune.md").read_text()
    assert "constraints: p99 <= 0.001 ms" in text and "No configuration met" in text
    assert (
        "client_protocol: grpc" in next((out / "work" / "analyzer-grpc").glob("*.yaml")).read_text()
    )
    again = _tune_cli(*args, cwd=tmp_path)  # the same --out again: refused, the report kept
    assert again.returncode == 2 and "pass --force" in again.stderr
    assert json.loads((out / "tune.json").read_text()) == report
