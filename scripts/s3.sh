#!/usr/bin/env bash
# A local S3-compatible server (SeaweedFS) on 127.0.0.1:8333 for experiments, data in .s3data/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m unmask_core.local_s3 --dir .s3data --port "${S3_PORT:-8333}" --bucket unmask "$@"
