# Sourced by scripts/*: make sure .venv exists and holds the project with its test extra.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "creating $VENV (first run; takes a minute)…" >&2
    "$PY" -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip > "$VENV/install.log" 2>&1 || { cat "$VENV/install.log" >&2; exit 1; }
fi
STAMP="$VENV/.labelmesh-installed"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
    echo "installing labelmesh and its dependencies into $VENV…" >&2
    "$VENV/bin/pip" install -q -e "$ROOT[test]" > "$VENV/install.log" 2>&1 || { cat "$VENV/install.log" >&2; echo "pip install failed (log above)" >&2; exit 1; }
    touch "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
