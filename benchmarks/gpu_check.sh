#!/usr/bin/env bash
# On one CUDA GPU, in one call of at most 570 s (give the call a timeout of 570 s): the CUDA correctness checks (bf16,
# fused AdamW, torch.compile with and without CUDA graphs, activation checkpointing, no host sync mid-step, exact
# resume, FSDP2 over one process, pinned blind batches), then the training-step table at the paper's configuration
# (meter eager and compiled against Hugging Face BridgeTower), then the VQA inference table (576 px, batch 128).
# Every part always runs (GPU time is scarce: a failed test must not cost the tables), each until its deadline on one
# clock from the script's start (tests 280 s, training 440 s, inference 550 s): a part that ends early leaves its time
# to the next, and a part cut at its deadline has already printed what it measured (each test's outcome, each table
# row as it is measured). The whole output goes to $OUT/gpu_check/ (or a folder under /tmp) as well, and ends with a
# summary of the three parts; the exit status is non-zero when a part failed or was cut.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
# seconds after the start by which each part ends (overridable, e.g. for a shorter call)
tests_until=${GPU_CHECK_TESTS_UNTIL:-280} training_until=${GPU_CHECK_TRAINING_UNTIL:-440}
inference_until=${GPU_CHECK_INFERENCE_UNTIL:-550}
if [ -n "${OUT:-}" ]; then logs="$OUT/gpu_check"; else logs=$(mktemp -d /tmp/gpu_check.XXXXXX); fi
mkdir -p "$logs"
echo "gpu_check: the whole output in $logs/"

python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')" || exit 1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$logs/machine.log" || true
python -c "import torch, transformers, timm; print('torch', torch.__version__, '| transformers',
      transformers.__version__, '| timm', timm.__version__)" | tee -a "$logs/machine.log"

# part NAME DEADLINE COMMAND...: COMMAND until DEADLINE s after the script's start, its output on the screen and in
# $logs/NAME.log; returns COMMAND's status (124 or 137: cut at the deadline; 125: no time was left to start it)
part() {
  local name=$1 deadline=$2
  shift 2
  local left=$((deadline - SECONDS))
  if [ "$left" -lt 20 ]; then
    echo "gpu_check: $name not run: ${left} s left before its deadline (${deadline} s)" | tee "$logs/$name.log"
    return 125
  fi
  echo "gpu_check: $name, $left s (until ${deadline} s after the start): $*"
  # -k: a process that ignores the TERM (a compile worker) is killed 5 s later
  timeout -k 5 "$left" "$@" 2>&1 | tee "$logs/$name.log"
  local status=${PIPESTATUS[0]}
  if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "gpu_check: $name cut at its deadline (${deadline} s); what it printed above is what it measured" |
      tee -a "$logs/$name.log"
  fi
  return "$status"
}

# -v: each test's outcome as it ends, so that a test part cut short still shows where the time went
part tests "$tests_until" python -m pytest -v -p no:cacheprovider --durations=0 tests/test_engine_cuda.py
tests=$?
part training "$training_until" python benchmarks/train_step.py --device cuda --compile "$@"
training=$?
part inference "$inference_until" python benchmarks/inference.py --device cuda --compile --steps 10
inference=$?

# the summary: what the call's reply shows even when it keeps only the output's tail
echo
echo "gpu_check summary (${SECONDS} s; the whole output in $logs/):"
grep -hE '(PASSED|FAILED|ERROR|SKIPPED|XFAIL)( |$)|^=+ .* in [0-9.]+s|cut at its deadline|not run:' "$logs/tests.log"
rows='^(config |VQA inference|device: | +samples/s|BridgeTower|meter|failed:|gpu_check: )|does not fit'
for name in training inference; do  # each row once (the table is printed again when a part ends)
  grep -hE "$rows" "$logs/$name.log" | awk '!seen[$0]++'
done
echo "gpu_check: tests exit $tests, training benchmark exit $training, inference benchmark exit $inference"
[ "$tests" -eq 0 ] && [ "$training" -eq 0 ] && [ "$inference" -eq 0 ]
