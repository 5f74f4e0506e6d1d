#!/usr/bin/env bash
# The StyleGAN-class example end to end (run from the repository root):
# seeded random weights -> gendeploy export (the fused modulated convolutions are rewritten, the
# gate checks FP32 and FP16 against eager) -> Triton repo -> serve -> generate with truncation 0.7
# -> stop -> bench it (in-process runners and the served model) into $OUT/bench.
set -euo pipefail
BIN=${BIN:-.venv/bin}
OUT=${OUT:-runs/stylegan}
REPO=${REPO:-$OUT/triton_repo}
mkdir -p "$OUT"

# Random weights stand in for a trained generator: export, serving and speed do not depend on them.
"$BIN/python" - "$OUT/stylegan.safetensors" <<'PY'
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, "examples/stylegan")
from model import StyleGAN  # noqa: E402

torch.manual_seed(0)
save_file(StyleGAN().state_dict(), sys.argv[1])
PY

# noise_mode=const: the model's default ("random") draws noise in forward, which export refuses.
"$BIN/gendeploy" export --model examples/stylegan/model.py:StyleGAN \
  --weights "$OUT/stylegan.safetensors" --latent-dim 64 --image-shape 3,32,32 \
  --forward-kwargs noise_mode=const --fp16 --output uint8 \
  --name stylegan --out "$OUT/export" --repo "$REPO" --force

ready="$OUT/serve.json"
rm -f "$ready"
"$BIN/gendeploy" serve "$REPO" --ready-file "$ready" --http-port 0 --grpc-port 0 --metrics-port 0 &
server=$!
trap 'kill -TERM "$server" 2>/dev/null; wait "$server" 2>/dev/null || true' EXIT
"$BIN/gendeploy" generate --ready-file "$ready" --wait-s 180 --model stylegan -n 16 \
  --out "$OUT/served.png"
"$BIN/gendeploy" generate --ready-file "$ready" --model stylegan -n 16 --truncation 0.7 \
  --out "$OUT/served_psi0.7.png"
kill -TERM "$server"
wait "$server" || true
trap - EXIT

"$BIN/gendeploy" bench --suite default --models stylegan32 --out "$OUT/bench"
echo "stylegan example done: $OUT/export/manifest.json, $OUT/served*.png, $OUT/bench/bench.md"
