#!/usr/bin/env bash
# README command 1: set up, then run the whole flow on the embedded default (`unmask demo`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/unmask demo "$@"
