#!/usr/bin/env bash
# Install Debian's headless-capable Chromium, which tests/test_report.py uses to open report.html in a
# real browser. Idempotent and quiet; never fails the caller: without root or apt it says why and exits 0
# (the report test then skips outside CI and fails with a clear message under CI=true).
set -uo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "[chromium] apt-get not found: not installing $CHROMIUM (the browser check of report.html will not run)"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
  else
    echo "[chromium] not root and no passwordless sudo: not installing $CHROMIUM"
    exit 0
  fi
else
  SUDO=()
fi

echo "[chromium] installing Debian's chromium (about a minute)"
log=$(mktemp)
export DEBIAN_FRONTEND=noninteractive
if "${SUDO[@]}" apt-get update -qq >"$log" 2>&1 \
  && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends chromium >>"$log" 2>&1; then
  echo "[chromium] installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
else
  echo "[chromium] apt-get failed; last lines of its output:"
  tail -n 5 "$log"
fi
rm -f "$log"
exit 0
