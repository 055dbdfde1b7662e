#!/usr/bin/env bash
# On one CUDA GPU, in under 10 minutes (give the call a timeout of 590 s): the CUDA correctness checks (bf16, fused
# AdamW, torch.compile with and without CUDA graphs, activation checkpointing, no host sync mid-step, exact resume,
# FSDP2 over one process, pinned blind batches), then the training-step table at the paper's configuration (meter
# eager and compiled against Hugging Face BridgeTower). Both parts always run (GPU time is scarce: a failed test
# must not cost the table); the exit status is non-zero when either failed.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python -c "import torch, transformers, timm; print('torch', torch.__version__, '| transformers', transformers.__version__,
      '| timm', timm.__version__)"
started=$SECONDS
# -v: each test's outcome as it ends, so that a test part cut short by its timeout still shows where the time went
timeout 310 python -m pytest -v -p no:cacheprovider --durations=0 tests/test_engine_cuda.py
tests=$?
# the benchmark gets what the tests left of the call's 590 s (it needed about 150 s on an H200)
timeout $((570 - (SECONDS - started))) python benchmarks/train_step.py --device cuda --compile "$@"
bench=$?
echo "gpu_check: tests exit $tests, benchmark exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
