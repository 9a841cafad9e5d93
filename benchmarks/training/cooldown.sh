#!/usr/bin/env bash
# A cooldown branch of the main run (warmup-stable-decay style): from one of its checkpoints
# (weights, optimizer, schedule), the learning rate falls linearly to min_lr_ratio x lr over N steps
# in a run folder of its own, with the main run's data mix; the main run is untouched and goes on
# from its own checkpoints. Resumable like kv_run.sh (rerun the same command).
# Usage: bash benchmarks/training/cooldown.sh CHECKPOINT BRANCH_DIR [N=150] [extra r3mem train options]
set -euo pipefail
cd "$(dirname "$0")/../.."
CKPT=${1:?checkpoint folder, e.g. runs/kv_spread/checkpoints/step_0001800}
RUN=${2:?run folder for the branch, e.g. runs/cool_1800}
N=${3:-150}
shift 3 || shift $#
STEP=$(.venv/bin/python -c "import json,sys; print(int(json.load(open(sys.argv[1]))['step']))" "$CKPT/r3mem_adapter.json")
if [ ! -d "$RUN/checkpoints" ]; then
  mkdir -p "$RUN/checkpoints"
  cp -r "$CKPT" "$RUN/checkpoints/"
fi
exec bash benchmarks/training/kv_run.sh "$RUN" --set "cooldown_from=$STEP" --set "cooldown_steps=$N" "$@"
