#!/usr/bin/env bash
# Moved into the GPU run kit: scripts/gpu/run.sh (preflight, parity, Wan2.1-1.3B speed per attention backend, peak
# memory); prepare it with `python scripts/gpu/kit.py pack` and carry [".gpukit"]. On N GPUs:
# `bash scripts/gpu_speed.sh --num-processes N` also trains and batch-generates on N processes (one per GPU, NCCL)
# against one (docs/distributed.md).
exec bash "$(dirname "$0")/gpu/run.sh" "$@"
