#!/usr/bin/env bash
# The prepared GPU check: on a machine with a CUDA GPU and TensorRT (10.x or 11.x), export the
# DCGAN-64 generator with TensorRT FP16 and INT8 (explicit, from the QDQ ONNX) engines, gate them
# against eager PyTorch (tensors + quality gate), time them beside eager CUDA, and run the tests
# marked `gpu` (StyleGAN-class engines with FP32 islands included); each engine's per-layer
# precision is read back with TensorRT's engine inspector (INT8 / FP16 must show). Writes
# everything under OUT_DIR. ~3-7 minutes.
#   usage: bash scripts/gpu_check.sh OUT_DIR      (make gpu-check OUT=dir)
#   PYTHON=/path/to/python overrides the interpreter (default .venv/bin/python, else python3).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${1:?usage: bash scripts/gpu_check.sh OUT_DIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PY="${PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
export GENDEPLOY_CACHE_DIR="${GENDEPLOY_CACHE_DIR:-$OUT/cache}"

{
  echo "date: $(date -u +%FT%TZ)"
  echo "host: $(uname -a)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.is_available())'
  "$PY" -c 'import tensorrt; print("tensorrt", tensorrt.__version__)' 2>&1
} | tee "$OUT/environment.txt"

"$PY" -m gendeploy doctor 2>&1 | tee "$OUT/doctor.txt"

status=0
timeout 300 "$PY" -m gendeploy.bench.gpu_check "$OUT" 2>&1 | tee "$OUT/gpu_check.log"
status=${PIPESTATUS[0]}

timeout 300 "$PY" -m pytest -m gpu -q -rs -p no:cacheprovider tests 2>&1 | tee "$OUT/pytest_gpu.log"
test_status=${PIPESTATUS[0]}

echo "gpu_check exit $status, gpu tests exit $test_status; results in $OUT" | tee -a "$OUT/gpu_check.log"
if [[ $status -ne 0 ]]; then exit "$status"; fi
exit "$test_status"
