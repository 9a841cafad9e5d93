#!/usr/bin/env bash
# Builds the documentation site (mkdocs.yml: the pages in docs/, the API reference from the docstrings)
# into DIR (default: site/). --strict: any warning (a broken link, a missing object) fails the build.
# Usage: bash scripts/build_docs.sh [DIR]   (needs .venv from scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/pip install -qq -r requirements-docs.lock
.venv/bin/mkdocs build --strict --site-dir "${1:-site}"
