#!/usr/bin/env bash
# The shipped adapter's training run: reconstruction-first key/value memory on SmolLM2-135M.
# Resumable: rerunning continues from the newest checkpoint in the run folder (every 100 steps).
# Usage: bash benchmarks/training/kv_run.sh [RUN_DIR] [extra r3mem train options]
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=${1:-runs/kv_main}
shift || true
[ -d .corpora/wiki ] || .venv/bin/python -m r3mem.train.corpora .corpora
exec .venv/bin/r3mem train --config src/r3mem/configs/smollm2-135m.yaml --out "$RUN" "$@"
