#!/usr/bin/env bash
# GPU speed of Wan2.1-T2V-1.3B (480x832, chunk 3, 4 warped steps) with random weights: FPS, first-chunk latency,
# peak GPU memory, per attention backend. Speed does not depend on weight values. Finishes in under 5 minutes on
# an H100/H200.
#
# Prepare here (diffusers is not in the GPU image; it is pure Python):
#   mkdir -p .wheels && echo /.wheels/ >> .git/info/exclude
#   pip download --no-deps -d .wheels "diffusers==$(python -c 'import diffusers; print(diffusers.__version__)')"
# Run there (device tool): carry [".wheels"], command: bash scripts/gpu_speed.sh
# Results land in $OUT (or ./gpu-speed): one JSON per run and summary.txt.
set -euo pipefail
out=${OUT:-gpu-speed}
mkdir -p "$out"
if ! python3 -c "import diffusers" 2>/dev/null; then
  python3 -m pip install -q --no-deps --target /tmp/streamgen-pylib .wheels/*.whl
  export PYTHONPATH=/tmp/streamgen-pylib:${PYTHONPATH:-}
fi
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/summary.txt"
bench() {  # name, extra args
  local name=$1; shift
  echo "== $name" | tee -a "$out/summary.txt"
  timeout 150 python3 -m streamgen.cli bench speed --preset wan2.1-1.3b --random-weights --device cuda \
    --dtype bf16 --frames 241 "$@" --json "$out/$name.json" 2>&1 | grep -v "^Loading" | tee -a "$out/summary.txt" || true
}
bench self-forcing-native --cache self-forcing --frames 81
bench longlive-native --cache longlive
bench longlive-native-flash --cache longlive --attention _native_flash
bench longlive-compiled --cache longlive --attention _native_flash --compile
