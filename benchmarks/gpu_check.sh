#!/usr/bin/env bash
# On one CUDA GPU, in under 8 minutes: the CUDA correctness checks (bf16, fused AdamW, torch.compile), then the
# training-step table at the paper's configuration (meter eager and compiled against Hugging Face BridgeTower).
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 180 python -m pytest -q -p no:cacheprovider tests/test_engine_cuda.py
timeout 300 python benchmarks/train_step.py --device cuda --compile
