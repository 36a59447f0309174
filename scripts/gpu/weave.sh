#!/usr/bin/env bash
# One GPU lease for camera memory: train AnchorWeave's weaving controller over the frozen shapeworld-cam-tiny
# (streamgen.train.weave) for WEAVE_SECONDS, then the GPU run kit (scripts/gpu/run.sh) for KIT_BUDGET seconds.
#   here:  python scripts/gpu/kit.py pack
#          python -c "from streamgen.train.weave import write_caption_table as w; w('shapeworld-cam-tiny', '.gpukit/captions.safetensors')"
#   there: device run, carry [".gpukit"], command: bash scripts/gpu/weave.sh
#   here:  the run's files: weave.tar (runs/weave-gpu: log, pipeline/controller), weave-state.safetensors, kit.tar
# The device has no MiniLM package: captions come from the precomputed table (every caption a camera-world map has).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-gpu-weave-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
if ! "$python" -c "import diffusers, importlib_metadata" 2>/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --target /tmp/streamgen-pylib .gpukit/whl/*.whl
  export PYTHONPATH=/tmp/streamgen-pylib:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" 2>&1 || true
workers=$(( $(nproc) > 2 ? $(nproc) - 1 : 1 ))
timeout $(( ${WEAVE_SECONDS:-280} + 90 )) "$python" -m streamgen.train.weave --device "${WEAVE_DEVICE:-cuda}" --out runs/weave-gpu \
  --steps 100000 --batch-size "${WEAVE_BATCH:-32}" --reuse "${WEAVE_REUSE:-4}" --lr "${WEAVE_LR:-2e-4}" \
  --ema-decay 0.998 --workers "$workers" --threads 4 --caption-table .gpukit/captions.safetensors \
  --seconds "${WEAVE_SECONDS:-280}" 2>&1 | grep -v "^Loading" | tee "$OUT/weave.log"
tar -cf "$OUT/weave.tar" runs/weave-gpu/log.jsonl runs/weave-gpu/config.json runs/weave-gpu/pipeline/controller \
  runs/weave-gpu/pipeline/model_index.json 2>&1 | tail -2
cp runs/weave-gpu/checkpoint/state.safetensors "$OUT/weave-state.safetensors" 2>&1 | tail -2
if [ "${KIT_BUDGET:-200}" -gt 0 ]; then
  OUT="$OUT/kit" BUDGET=${KIT_BUDGET:-200} bash scripts/gpu/run.sh > "$OUT/kit.log" 2>&1
  tar -cf "$OUT/kit.tar" -C "$OUT" kit && rm -rf "$OUT/kit"
  tail -5 "$OUT/kit.log"
fi
ls -la "$OUT"
