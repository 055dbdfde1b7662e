#!/usr/bin/env bash
# `meter study` on a CPU: benchmarks/study_cpu.yaml (2 fusions x 2 seeds, pretraining + VQA on the shapes world) from
# nothing (the world is generated in the study's folder) to the report, timed. Usage: benchmarks/study_cpu.sh [OUT]
# [JOBS]; the load average before and after is printed (the machine's other work slows it).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-runs/study-cpu}
jobs=${2:-2}
echo "cores: $(nproc); load before: $(cut -d' ' -f1-3 /proc/loadavg)"
start=$(date +%s)
meter study run benchmarks/study_cpu.yaml --out "$out" --jobs "$jobs"
echo "wall: $(( $(date +%s) - start )) s with --jobs $jobs; load after: $(cut -d' ' -f1-3 /proc/loadavg)"
cat "$out/report.md"
