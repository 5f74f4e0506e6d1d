#!/usr/bin/env bash
# The main job end to end on the embedded default (called by `make demo`):
# train the default preset -> export (gated ONNX FP32/FP16/uint8, INT8 through the quality gate,
# TensorRT where present) and write
# the Triton repo -> serve it with a real tritonserver on loopback -> generate a PNG grid -> stop.
set -euo pipefail
BIN=${BIN:-.venv/bin}
RUN=${RUN:-runs/demo}
EXPORT=${EXPORT:-exports/demo}
REPO=${REPO:-triton_repo}

"$BIN/gendeploy" train --preset digits-cdcgan --out "$RUN" --force
"$BIN/gendeploy" export "$RUN/checkpoint.pt" --name demo --out "$EXPORT" --fp16 --int8 \
  --output uint8 --repo "$REPO" --force

ready="$RUN/serve.json"
rm -f "$ready"
"$BIN/gendeploy" serve "$REPO" --ready-file "$ready" --http-port 0 --grpc-port 0 --metrics-port 0 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
"$BIN/gendeploy" generate --ready-file "$ready" --wait-s 180 --model demo -n 40 \
  --out "$RUN/served.png"
"$BIN/gendeploy" generate --ready-file "$ready" --model demo_uint8 -n 40 --protocol grpc \
  --out "$RUN/served_uint8.png"
# the INT8 model: OpenVINO inside the python backend runs the quantized layers in INT8
"$BIN/gendeploy" generate --ready-file "$ready" --model demo_int8 -n 40 \
  --out "$RUN/served_int8.png"
echo "demo done: $RUN/samples/ (training), $EXPORT/manifest.json, $RUN/served.png and served_int8.png (served by Triton)"
