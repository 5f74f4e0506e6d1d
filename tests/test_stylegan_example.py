"""examples/stylegan: the bench exports and times it like its own models, with its FLOP count."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from gendeploy.bench.flops import flops_per_image
from gendeploy.bench.suites import STYLEGAN32, BenchModel, Suite, UserModel, get_suite
from gendeploy.bench.timing import StabilityRule

EXAMPLE = Path(__file__).parents[1] / "examples" / "stylegan"


def _example() -> object:
    spec = importlib.util.spec_from_file_location("stylegan_example", EXAMPLE / "model.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_default_bench_suite_has_the_stylegan_example() -> None:
    assert STYLEGAN32 in get_suite("default").models
    assert STYLEGAN32.user_model is not None and STYLEGAN32.user_model.path().is_file()
    assert (EXAMPLE / "run.sh").is_file()


@pytest.mark.slow  # end to end, over 10 s here
def test_the_bench_exports_and_times_the_example_with_its_truncation_input(tmp_path: Path) -> None:
    from gendeploy.bench.run import run_bench

    tiny = BenchModel(
        "stylegan_tiny",
        STYLEGAN32.config,
        user_model=UserModel(
            "examples/stylegan/model.py:tiny",
            16,
            (3, 8, 8),
            forward_kwargs=(("noise_mode", "const"),),
        ),
    )
    suite = Suite(
        "stylegan_tiny",
        (tiny,),
        batches=(1, 4),
        runners=("eager", "onnxruntime"),
        served=False,
        rule=StabilityRule(window_s=0.05, max_windows=4, warmup_calls=1),
        threads=1,
        profile=False,
    )
    report = run_bench(suite, tmp_path / "out", work_dir=tmp_path / "work")
    model = report.models[0]
    example = _example()
    assert model.flops_per_image == flops_per_image(example.tiny(), 16, 0)  # type: ignore[attr-defined]
    cells = {(c.runner, c.batch): c for c in model.cells}
    assert set(cells) == {(r, b) for r in ("eager", "onnxruntime") for b in (1, 4)}
    # the export takes z and truncation; the bench fed truncation at the model's default
    assert all(c.max_abs_diff < 1e-4 for c in cells.values())
    manifest_dir = tmp_path / "work" / "exports" / "stylegan_tiny"
    from gendeploy.manifest import load_manifest

    manifest = load_manifest(manifest_dir)
    assert [t.name for t in manifest.artifact("fp32").inputs] == ["z", "truncation"]
    assert manifest.interface.forward_kwargs == {"noise_mode": "const"}
    assert len(manifest.artifact("fp32").extra["rewrites"]) == 6  # 2 blocks x (2 convs + toRGB)
