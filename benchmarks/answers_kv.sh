#!/usr/bin/env bash
# The answering benchmarks with the shipped key/value adapter (issue: answers at conversation scale), every
# method in one run per task, the same reader and budget; r3mem also with its other answer reads, reusing the
# memories written by the first run (--memory-cache). Usage: bash benchmarks/answers_kv.sh [locomo|rag|needle|kv]...
# TAG names the result files (kv: the first runs with the key/value adapter); READ is the main run's answer read
# (checked: the agent's default, the decoded text found by checking each expansion against its source);
# PER_DOC=all scores every question of every conversation.
set -euo pipefail
cd "$(dirname "$0")/.."
D=${D:-../shared/data}
CACHE=${R3MEM_MEMORY_CACHE:-/tmp/r3mem-memories}
R3="${R3:-.venv/bin/r3mem} eval"
BASE="bm25,embedding,no_memory,full_context"
T=${TAG:-kv}
MAIN="--answer-read ${READ:-checked}"
run() {  # task, out name, extra args...
  local task=$1 out=$2; shift 2
  [ -f "benchmarks/$task/results/$out.json" ] && { echo "have $out"; return; }
  echo "== $task $out ($(date -u +%H:%M))"
  $R3 "$task" --memory-cache "$CACHE" --out "benchmarks/$task/results/$out.json" "$@" > /dev/null
}
tasks=("$@")
[ ${#tasks[@]} -eq 0 ] && tasks=(locomo rag needle kv)
for task in "${tasks[@]}"; do
  case $task in
    locomo)
      L="--data $D/locomo/locomo_dev8.json"  # every conversation, its first PER_DOC questions (default 40)
      [ "${PER_DOC:-40}" = all ] || L="$L --per-doc ${PER_DOC:-40}"
      run locomo "locomo8_$T" $L --methods "r3mem,$BASE" $MAIN
      run locomo "locomo8_${T}_source" $L --methods r3mem --answer-read source
      run locomo "locomo8_${T}_cache" $L --methods r3mem --answer-read cache ;;
    rag)
      N="--data $D/nq_open/nq-open-oracle_dev.jsonl.gz --limit ${RAG_LIMIT:-100}"
      run rag "nq-oracle_$T" $N --methods "r3mem,$BASE" $MAIN
      run rag "nq-oracle_${T}_cache" $N --methods r3mem --answer-read cache
      run rag "nq-distract10_$T" $N --distractors 9 --methods "r3mem,$BASE" $MAIN
      run rag "nq-distract10_${T}_cache" $N --distractors 9 --methods r3mem --answer-read cache ;;
    needle)
      run needle "pg-essays_$T" $MAIN --data "$D/needle_haystack/PaulGrahamEssays" --lengths 1000,2000,4000,8000 \
        --depths 0,0.25,0.5,0.75,1 --methods "r3mem,$BASE" ;;
    kv)
      run kv "kv75_$T" $MAIN --data "$D/nq_open/kv-retrieval-75_keys_dev.jsonl.gz" --limit 100 --methods "r3mem,$BASE" ;;
  esac
done
