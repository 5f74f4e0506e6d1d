#!/usr/bin/env bash
# `make demo`'s path for an image-to-image model (called by `make demo-sr`): train the x4
# super-resolution preset on the embedded digits -> export (gated ONNX FP32/FP16, INT8 through
# the image quality gate) and write the Triton repo -> serve it with a real tritonserver on
# loopback -> upscale a PNG of held-out digit scans over HTTP and gRPC -> stop.
set -euo pipefail
BIN=${BIN:-.venv/bin}
RUN=${RUN:-runs/demo-sr}
EXPORT=${EXPORT:-exports/demo-sr}
REPO=${REPO:-triton_repo}
STEPS=${STEPS:-}  # empty: the preset's own

"$BIN/gendeploy" train --preset digits-sr4x --out "$RUN" --force ${STEPS:+--steps "$STEPS"}
"$BIN/gendeploy" export "$RUN/checkpoint.pt" --name demo-sr --out "$EXPORT" --fp16 --int8 \
  --repo "$REPO" --force

# the input: 8 x 12 held-out scans (8x8 each, defocused as the model was trained on), 64 x 96
"$BIN/python" - "$RUN/lowres.png" <<'PY'
import sys
from PIL import Image
from gendeploy.export.image_gate import digits_mosaics
Image.fromarray(digits_mosaics(64, 96, 1, 1, seed=0, blur=1.0)[0, ..., 0]).save(sys.argv[1])
PY

ready="$RUN/serve.json"
rm -f "$ready"
"$BIN/gendeploy" serve "$REPO" --ready-file "$ready" --http-port 0 --grpc-port 0 --metrics-port 0 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
"$BIN/gendeploy" upscale "$RUN/lowres.png" -o "$RUN/served.png" --ready-file "$ready" \
  --wait-s 180 --model demo-sr
"$BIN/gendeploy" upscale "$RUN/lowres.png" -o "$RUN/served_int8.png" --ready-file "$ready" \
  --model demo-sr_int8 --protocol grpc
echo "demo-sr done: $RUN/lowres.png (64 x 96) -> $RUN/served.png and served_int8.png (256 x 384, served by Triton)"
