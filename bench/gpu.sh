#!/usr/bin/env bash
# bench/gpu.sh: raw and served img/s for EfficientNet-B4 at 380 px, fp16 and bf16, on one lent GPU (H100).
#
#   bench/gpu.sh             on the GPU machine, from anywhere in the repo; about 5 minutes, under 8
#   bench/gpu.sh --dry-run   anywhere: the same code paths with a tiny model on CPU, in well under a minute
#
# raw:    bench/bare.py raw: each runtime's predict from host uint8 (pinned upload, normalise, forward,
#         scores, one sync), batch 1, 8, 32, 64, 128, 256, and p50 latency at batch 1. Runtimes: torch eager,
#         torch with a captured CUDA graph per padded batch bucket (the server's GPU default), and ONNX
#         Runtime's CUDA provider when this machine's onnxruntime has it (onnxruntime-gpu);
# served: bench/server.py --systems server,bare: `deepdetect-server serve` with default settings (runtime
#         auto: it times its candidates and keeps the fastest) over HTTP (real JPEG photos, multipart
#         /v1/detect, several client processes) at concurrency 1..512 with max_batch_size
#         min(concurrency, 256), next to the same runtime's pipelined decode + forward loop (bare).
# Weights are random init (checkpoint create, no downloads); nothing is fetched when .whl/ holds the
# server's few packages the GPU image lacks (see bench/README.md); otherwise pip asks its index.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
START=$SECONDS

DRY=0
if [[ "${1:-}" == "--dry-run" || "${1:-}" == "--tiny" ]]; then DRY=1; fi

# --- python ------------------------------------------------------------------------------------------
# DEEPDETECT_PYTHON wins; else the repo's .venv when it has torch (a dev box); else the machine's python3
# (on the lent GPU image it is the one holding torch, timm, Pillow, httpx) plus the server's missing
# packages installed with --target into a private folder: a venv made from it with --system-site-packages
# would not see torch there, because that python3 is itself a venv.
PY=${DEEPDETECT_PYTHON:-}
if [[ -z "$PY" && -x .venv/bin/python ]] && .venv/bin/python -c "import torch, timm" 2>/dev/null; then
  PY=.venv/bin/python
fi
PY=${PY:-python3}
export PYTHONPATH="$ROOT/inference_server${PYTHONPATH:+:$PYTHONPATH}"
# What the lent GPU image lacks (it has torch, timm, Pillow, httpx, scikit-image, prometheus-client,
# safetensors, pyyaml, anyio, h11). Installed with --no-deps so nothing can pull a second torch.
NEEDED="fastapi starlette uvicorn pydantic pydantic-core pydantic-settings python-dotenv python-multipart
annotated-types annotated-doc typing-inspection httptools"
if ! "$PY" -c "import fastapi, uvicorn, pydantic_settings, python_multipart, prometheus_client, timm, httpx, skimage" \
    2>/dev/null; then
  SITE=${DEEPDETECT_SITE:-/tmp/deepdetect-gpu-site}
  echo "== installing the server's packages into $SITE"
  if [[ -d .whl ]]; then
    # Offline: every wheel named, no dependency resolution against an index that is not there.
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
  else
    # shellcheck disable=SC2086  # word splitting of the package list is intended
    "$PY" -m pip install -q --no-deps --target "$SITE" $NEEDED
  fi
  export PYTHONPATH="$PYTHONPATH:$SITE"
  "$PY" -c "import fastapi, uvicorn, pydantic_settings, python_multipart, timm, httpx, skimage" || {
    echo "error: the server's packages are still missing; see bench/README.md (GPU)" >&2; exit 2; }
fi
export PYTHONUNBUFFERED=1

# --- settings ----------------------------------------------------------------------------------------
if [[ $DRY == 1 ]]; then
  ARCH=test_efficientnet SIZE=64 DEVICE=cpu RAW_BS=1,2 RAW_S=0.05 LEVELS=1,2 REQUESTS=8 CLIENTS=2
  EXTRA=(--quick --torch-threads 1)
  T_RAW=120 T_SERVED=180
else
  ARCH=efficientnet_b4 SIZE=380 DEVICE=cuda RAW_BS=1,8,32,64,128,256 RAW_S=0.5 LEVELS=1,64,256,512
  REQUESTS=512 CLIENTS=4   # and at least 4 requests per connection: 2,048 at concurrency 512
  EXTRA=(--torch-threads 0)
  T_RAW=110 T_SERVED=120   # per precision: 2 x (110 + 120) s + set-up stays under 9 minutes
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi
"$PY" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, \
'cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"

OUT_DIR=${OUT:-/tmp}
SUMMARY=()
for PREC in fp16 bf16; do
  echo
  echo "== raw: $ARCH ${SIZE}px $PREC (each runtime's predict from host uint8)"
  if timeout "$T_RAW" "$PY" bench/bare.py raw --arch "$ARCH" --input-size "$SIZE" --device "$DEVICE" \
      --precision "$PREC" --batch-sizes "$RAW_BS" --seconds "$RAW_S" \
      --runtimes torch-eager,torch-cuda-graphs,onnxruntime | tee "$OUT_DIR/raw-$PREC.txt"; then
    SUMMARY+=("$(grep '^raw-best:' "$OUT_DIR/raw-$PREC.txt")")
    SUMMARY+=("$PREC $(grep '^raw-p50-batch1-ms:' "$OUT_DIR/raw-$PREC.txt")")
  else
    SUMMARY+=("raw $PREC: FAILED or timed out (rc=$?)")
  fi
  echo
  echo "== served: $ARCH ${SIZE}px $PREC over HTTP (server), and the server's own loop (bare)"
  # --max-px 1400: ordinary photos; a decode-bound CPU side is part of what "served" means.
  if timeout "$T_SERVED" "$PY" bench/server.py --systems server,bare --arch "$ARCH" --input-size "$SIZE" \
      --device "$DEVICE" --precision "$PREC" --concurrency "$LEVELS" --max-batch-size 256 --runtimes "" \
      --max-delay-ms 5 --requests "$REQUESTS" --min-requests-per-conn 4 --rounds 1 --client-procs "$CLIENTS" "${EXTRA[@]}" \
      | tee "$OUT_DIR/served-$PREC.txt"; then
    best=$(awk '$1 == "server" {print $7}' "$OUT_DIR/served-$PREC.txt" | sort -g | tail -1)
    SUMMARY+=("served-best: precision=$PREC img_s=$best")
    SUMMARY+=("$PREC $(grep '^server-b256:' "$OUT_DIR/served-$PREC.txt" | head -1)")
    SUMMARY+=("$PREC $(tail -1 "$OUT_DIR/served-$PREC.txt")")
  else
    SUMMARY+=("served $PREC: FAILED or timed out (rc=$?)")
  fi
done

echo
echo "== summary ($ARCH ${SIZE}px on $DEVICE, $((SECONDS - START)) s)"
printf '%s\n' "${SUMMARY[@]}"
