#!/usr/bin/env bash
# The second call of a GPU session, after gpu_check.sh (under 9 minutes): the levers prepared on the CPU since the
# last GPU session, timed in one process at the paper's configuration (meter only: gpu_check.sh has just measured
# BridgeTower), then where the compiled step spends its time. Rows: eager, eager with activation checkpointing,
# compiled (torch.compile's default mode), compiled with CUDA graphs (reduce-overhead); then the compiled step's
# kernels by device time. A session's 15 device minutes hold gpu_check.sh's 570 s and the machine's start: give this
# call what `status` says is left (budget_left_s) less 30 s, and the same in GPU_LEVERS_SECONDS (default 540); rows
# print as they are measured, so a cut run keeps them.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_levers: no CUDA device')" || exit 1
timeout -k 5 "${GPU_LEVERS_SECONDS:-540}" python benchmarks/train_step.py --device cuda --only-meter --steps 10 --recompute --compile \
  --compile-mode default reduce-overhead --profile compiled "$@"
