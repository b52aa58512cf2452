#!/usr/bin/env bash
# The package as `pip install .` gives it to users: built as a wheel, installed without the editable
# link or any script into a fresh venv, then `unmask --version` and `unmask unmask --help` run from
# outside the checkout. The fresh venv reads its dependencies from .venv (a path file) instead of
# downloading 7 GB again; `pip check` proves they satisfy the wheel's requirements. About 15 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Built from a copy of the checkout's files (tracked, and new ones not ignored): an in-tree build would
# leave build/ behind, whose stale modules a later wheel would carry.
mkdir "$work/src"
git ls-files -z --cached --others --exclude-standard | tar --null -T - --ignore-failed-read -cf - | tar -xf - -C "$work/src"
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir "$work/dist" "$work/src"
"$PY" -m venv --without-pip "$work/venv"  # nothing of its own: no pip, no old setuptools
deps=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
own=$("$work/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" > "$own/dependencies-from-dot-venv.pth"
pip=("$PY" -m pip --python "$work/venv/bin/python")
"${pip[@]}" install --quiet --no-deps --no-index "$work"/dist/unmask-*.whl
"${pip[@]}" check
expected=$(cd "$work" && "$work/venv/bin/python" -c 'import importlib.metadata as m; print(m.version("unmask"))')
version=$(cd "$work" && "$work/venv/bin/unmask" --version)
[ "$version" = "unmask $expected" ] || { echo "[install] unmask --version said '$version'" >&2; exit 1; }
(cd "$work" && "$work/venv/bin/unmask" unmask --help) | grep -q -- "--matchers" \
  || { echo "[install] unmask unmask --help does not list --matchers" >&2; exit 1; }
where=$(cd "$work" && "$work/venv/bin/python" -c 'import unmask_core; print(unmask_core.__file__)')
case "$where" in "$work"/venv/*) ;; *) echo "[install] unmask_core came from $where" >&2; exit 1 ;; esac
echo "[install] $version: installed from the wheel into a fresh venv, --version and --help run"
