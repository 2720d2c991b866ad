# Sourced by the other scripts: create or reuse ./.venv with the pinned stack, reinstalling only
# when pyproject.toml changed. Needs python3.11 (DGL 2.1.0 has wheels for it).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PEACE_PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x .venv/bin/python ]; then
  echo "[peace] creating .venv with $PY"
  "$PY" -m venv .venv
fi
STAMP=.venv/.peace-installed
HASH="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$HASH" ]; then
  echo "[peace] installing PEACE and its pinned dependencies into .venv (a few minutes the first time)"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[dev]"
  echo "$HASH" > "$STAMP"
fi
export PATH="$ROOT/.venv/bin:$PATH"
export DGLBACKEND=pytorch
