#!/usr/bin/env bash
# Train every ablation / baseline adapter with the same pipeline, data, steps and batch as the full
# method: the base config plus the overrides in src/r3mem/configs/baselines/NAME.yaml, passed to
# `r3mem train` as --set flags. Each run resumes if interrupted (same --out).
#
#   bash benchmarks/train_baselines.sh                       # all of them
#   bash benchmarks/train_baselines.sh recurrent autoencoder # some
#   R3MEM=.venv/bin/r3mem RUNS=runs/baselines EXTRA="--set steps=50" bash benchmarks/train_baselines.sh
#
# Then evaluate with, for each NAME trained:  --method-model <method>=$RUNS/NAME/adapter
# (method names: r3mem_no_hierarchy, r3mem_no_backward, r3mem_no_cycle, r3mem_coupling, recurrent, autoencoder).
set -euo pipefail

cd "$(dirname "$0")/.."
R3MEM=${R3MEM:-r3mem}
PYTHON=${PYTHON:-python}
CONFIG=${CONFIG:-src/r3mem/configs/smollm2-135m.yaml}
RUNS=${RUNS:-runs/baselines}
OVERRIDES=src/r3mem/configs/baselines
read -r -a EXTRA_ARGS <<< "${EXTRA:-}"

names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  names=(recurrent autoencoder no_hierarchy no_backward no_cycle coupling)
fi

for name in "${names[@]}"; do
  file="$OVERRIDES/$name.yaml"
  [ -f "$file" ] || { echo "error: $file: no such override file" >&2; exit 1; }
  # One `--set key=value` per top-level entry; values as JSON (valid YAML) so lists survive.
  mapfile -t sets < <("$PYTHON" -c '
import json, sys, yaml
for key, value in (yaml.safe_load(open(sys.argv[1])) or {}).items():
    print(f"{key}={json.dumps(value)}")
' "$file")
  args=()
  for s in "${sets[@]}"; do args+=(--set "$s"); done
  echo "== $name: $R3MEM train --config $CONFIG --out $RUNS/$name ${args[*]} ${EXTRA_ARGS[*]:-}" >&2
  "$R3MEM" train --config "$CONFIG" --out "$RUNS/$name" "${args[@]}" "${EXTRA_ARGS[@]}"
done
