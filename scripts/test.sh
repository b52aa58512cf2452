#!/usr/bin/env bash
# README command 2: set up, then lint and run the test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
bash scripts/setup.sh
bash scripts/install_chromium.sh   # the report test opens report.html in a real headless Chromium
echo "[test] setup took $(( $(date +%s) - start ))s"
bash scripts/check_install.sh      # the package as `pip install .` gives it: --version, --help
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/python -m pytest "$@"
echo "[test] total $(( $(date +%s) - start ))s"
