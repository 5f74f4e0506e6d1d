# gendeploy: `make setup` then `make test`; `make demo` runs the whole job on the embedded default.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
RUN    ?= runs/demo
EXPORT ?= exports/demo
REPO   ?= triton_repo
# pytest processes for `make test`: much of the suite waits on servers and fixed-length load
# runs, and two processes overlap that waiting (1,208 s -> 728 s on a quiet 2-core Zen 3)
WORKERS ?= 2

.PHONY: help setup test test-fast lint typecheck demo demo-sr bench bench-quick bench-served bench-images bench-cotenant soak gpu-check clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

setup: ## create .venv with the CPU build of torch and the project's CPU, dev, tune and deploy extras
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install torch==2.13.0
	$(BIN)/pip install -e '.[cpu,dev,tune,deploy]'
	$(BIN)/pip check
	VENV=$(VENV) bash scripts/get_perf_analyzer.sh >/dev/null  # Triton's load generator (cached)

test: ## the whole test suite (lint, types, pytest in WORKERS processes, a test file each; GPU tests skip without CUDA + TensorRT)
	$(BIN)/ruff check gendeploy tests
	$(BIN)/ruff format --check gendeploy tests
	@# mypy (38 s of one core, cold) runs beside pytest, whose two processes leave about a
	@# fifth of the two cores idle while they wait on servers; its report follows pytest's
	@types=$$(mktemp); $(BIN)/mypy >$$types 2>&1 & pid=$$!; \
	$(BIN)/pytest -n $(WORKERS) --dist loadfile; tests=$$?; \
	wait $$pid; typed=$$?; echo "mypy:"; cat $$types; rm -f $$types; \
	test $$tests -eq 0 -a $$typed -eq 0

test-fast: ## pytest without the slow end-to-end tests
	$(BIN)/pytest -m "not slow"

lint: ## ruff lint + format check
	$(BIN)/ruff check gendeploy tests
	$(BIN)/ruff format --check gendeploy tests

typecheck: ## mypy on the package
	$(BIN)/mypy

demo: ## train the default preset, export + gate it, serve it with Triton, generate a PNG grid
	BIN=$(BIN) RUN=$(RUN) EXPORT=$(EXPORT) REPO=$(REPO) bash scripts/demo.sh

demo-sr: ## the same for the x4 super-resolution preset: train, export, serve, upscale a PNG (~5 min)
	BIN=$(BIN) REPO=$(REPO) bash scripts/demo_sr.sh

clean: ## remove runs/, exports/ and generated triton_repo/ models
	rm -rf runs exports
	find $(REPO) -mindepth 1 -maxdepth 1 ! -name README.md -exec rm -rf {} +

bench: ## the default bench suite (~4-10 min here); report under bench/
	$(BIN)/gendeploy bench --suite default --out bench

bench-images: ## the image-to-image bench of exports/digits-sr4x (MP/s, peaks, PSNR, served); bench/images
	test -f exports/digits-sr4x/manifest.json || ( $(BIN)/gendeploy train --preset digits-sr4x && \
	  $(BIN)/gendeploy export runs/digits-sr4x/checkpoint.pt --fp16 --int8 )
	$(BIN)/python -m gendeploy.bench.images --export exports/digits-sr4x --out bench/images --threads 1

bench-quick: ## a ~1 min bench of the demo model
	$(BIN)/gendeploy bench --suite quick --out bench/quick

bench-served: ## DCGAN-64 served at concurrency 1-8 beside in-process batch 1, each image's time split (~8 min)
	$(BIN)/gendeploy bench --suite default --models dcgan64 --batches 1,8 --runners onnxruntime \
		--concurrency 1,2,4,8 --out bench/served

bench-cotenant: ## train + export quiet and beside one busy process, adaptive vs pinned threads (~10 min)
	$(BIN)/python -m gendeploy.bench.cotenant --out bench/cotenant

soak: ## serve the demo export at concurrency 8 for 5 min: failed requests, p99, memory (bench/soak)
	test -f $(EXPORT)/manifest.json || $(MAKE) demo
	$(BIN)/gendeploy soak $(EXPORT) --duration-s 300 --concurrency 8 --out bench/soak

gpu-check: ## on a GPU host with TensorRT: export, build + validate the FP16 engine, time it (OUT=dir)
	bash scripts/gpu_check.sh $(or $(OUT),gpu-check-results)
