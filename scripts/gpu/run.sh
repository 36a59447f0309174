#!/usr/bin/env bash
# The GPU run kit's one command (see scripts/gpu/kit.py): on the device machine, carry [".gpukit"] (made here by
# `python scripts/gpu/kit.py pack`), run `bash scripts/gpu/run.sh`; results land as JSON under $OUT. Within 10
# minutes: preflight, parity (fp32, bf16), Wan2.1-1.3B speed per attention backend with peak memory.
# `bash scripts/gpu/run.sh --dry-run` runs the preflight alone, on any machine; `--num-processes N` (N GPUs) adds the
# distributed step: training and batch generation on N processes (NCCL) against one.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OUT=${OUT:-gpu-kit-out} PYTHONUNBUFFERED=1
python=${PYTHON:-python3}
if ! "$python" -c "import diffusers, importlib_metadata" 2>/dev/null; then
  "$python" -m pip install -q --no-index --no-deps --target /tmp/streamgen-pylib .gpukit/whl/*.whl
  export PYTHONPATH=/tmp/streamgen-pylib:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-}
if command -v nvidia-smi >/dev/null; then
  mkdir -p "$OUT" && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia-smi.csv" || true
fi
exec "$python" scripts/gpu/kit.py run "$@"
