#!/usr/bin/env bash
# Equal-budget comparison of R³Mem, its ablations and the trained baselines (issue 4).
#
# 1. trains the full method from benchmarks/equal_budget/config.yaml and every ablation / baseline
#    from the same file plus its override (benchmarks/train_baselines.sh): same data, steps, batch,
#    schedule and seed;
# 2. evaluates all methods of `r3mem eval` in one run per task, every adapter method pointing at its
#    adapter from step 1, and writes benchmarks/<task>/results/*_equal<STEPS>_cpu.json (+ PNG).
#
#   bash benchmarks/equal_budget/run.sh              # train what is missing, then evaluate
#   STAGES=eval bash benchmarks/equal_budget/run.sh  # evaluate only
#   TASKS="lm rag" bash benchmarks/equal_budget/run.sh
#   # the shipped adapter against recurrent and autoencoder trained with its own recipe (400 steps):
#   CONFIG=src/r3mem/configs/smollm2-135m.yaml MODEL=src/r3mem/pretrained/smollm2-135m \
#     BASELINES="recurrent autoencoder" RUNS=runs/budget400 bash benchmarks/equal_budget/run.sh
#   # every method trained from the shipped recipe cut to 150 steps (EXTRA: more `r3mem train` options):
#   CONFIG=src/r3mem/configs/smollm2-135m.yaml EXTRA="--set steps=150" TAG=kv150_cpu \
#     BASELINES="recurrent autoencoder" RUNS=runs/kv150 TASKS="lm recon" bash benchmarks/equal_budget/run.sh
#
# Training resumes from the newest checkpoint of an interrupted run (same RUNS folder). Limits are
# small because each method's evaluation costs minutes on 2 CPU cores; raise them on a bigger machine.
set -euo pipefail

cd "$(dirname "$0")/../.."
R3MEM=${R3MEM:-.venv/bin/r3mem}
PYTHON=${PYTHON:-.venv/bin/python}
CONFIG=${CONFIG:-benchmarks/equal_budget/config.yaml}
RUNS=${RUNS:-runs/equal_budget}
STAGES=${STAGES:-"train eval"}
TASKS=${TASKS:-"lm recon rag kv"}
MODEL=${MODEL:-}  # the full method's adapter; empty: train it from CONFIG into $RUNS/r3mem
EXTRA=${EXTRA:-}  # extra `r3mem train` options for every method, e.g. "--set steps=200"
read -r -a EXTRA_ARGS <<< "$EXTRA"
# The default TAG names CONFIG's step count; options in EXTRA may change it, so then TAG must be given.
if [ -n "$EXTRA" ] && [ -z "${TAG:-}" ]; then
  echo "error: EXTRA changes the recipe: set TAG to name the result files (e.g. TAG=kv150_cpu)" >&2; exit 1
fi
D=${DATA:-../shared/data}
TAG=${TAG:-equal$("$PYTHON" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["steps"])' "$CONFIG")_cpu}
# Cheapest first, so that an interrupted session still has the headline comparison.
BASELINES=${BASELINES:-"autoencoder no_backward recurrent no_cycle coupling no_hierarchy"}

declare -A METHOD=([recurrent]=recurrent [autoencoder]=autoencoder [no_hierarchy]=r3mem_no_hierarchy
  [no_backward]=r3mem_no_backward [no_cycle]=r3mem_no_cycle [coupling]=r3mem_coupling)

if [[ " $STAGES " == *" train "* ]]; then
  [ -n "$MODEL" ] || [ -f "$RUNS/r3mem/adapter/r3mem_adapter.json" ] || "$R3MEM" train --config "$CONFIG" --out "$RUNS/r3mem" "${EXTRA_ARGS[@]}"
  for name in $BASELINES; do
    [ -f "$RUNS/$name/adapter/r3mem_adapter.json" ] && continue
    R3MEM=$R3MEM PYTHON=$PYTHON CONFIG=$CONFIG RUNS=$RUNS EXTRA=$EXTRA bash benchmarks/train_baselines.sh "$name"
  done
fi

if [[ " $STAGES " == *" eval "* ]]; then
  mm=()
  for name in "${!METHOD[@]}"; do
    [ -d "$RUNS/$name/adapter" ] && mm+=(--method-model "${METHOD[$name]}=$RUNS/$name/adapter")
  done
  model=(--model "${MODEL:-$RUNS/r3mem/adapter}")
  for task in $TASKS; do
    case $task in
      lm)    args=(--data "$D/pg19/10356.txt" --max-tokens 2048 --out "benchmarks/lm/results/pg19-10356_$TAG.json") ;;
      recon) args=(--data "$D/pg19/10356.txt" --limit 8 --ratios 4,8 --out "benchmarks/recon/results/pg19-10356_$TAG.json") ;;
      rag)   args=(--data "$D/nq_open/nq-open-oracle_dev.jsonl.gz" --limit 12 --out "benchmarks/rag/results/nq-oracle_$TAG.json") ;;
      kv)    args=(--data "$D/nq_open/kv-retrieval-75_keys_dev.jsonl.gz" --limit 3 --out "benchmarks/kv/results/kv75_$TAG.json") ;;
      *) echo "error: unknown task '$task' (lm, recon, rag, kv)" >&2; exit 1 ;;
    esac
    echo "== eval $task" >&2
    "$R3MEM" eval "$task" "${args[@]}" "${model[@]}" "${mm[@]}" > /dev/null
  done
fi
