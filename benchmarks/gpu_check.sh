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
timeout 270 python -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py
tests=$?
timeout 280 python benchmarks/train_step.py --device cuda --compile "$@"
bench=$?
echo "gpu_check: tests exit $tests, benchmark exit $bench"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
