#!/usr/bin/env bash
# Run Chord's whole test suite: lint, an import smoke test, then pytest (extra args go to pytest).
# Installs the test tools into .venv (and, as root, the Debian packages the browser tests need).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="$ROOT/.venv/bin/python"
if [[ ! -x "$PY" ]]; then
  echo "No .venv: run 'bash install.sh' first." >&2
  exit 1
fi
"$PY" -m pip install -q -r requirements-dev.txt
bash scripts/install_test_packages.sh
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
"$PY" -m ruff check app tests scripts
"$PY" -m ruff format --check app tests scripts
shellcheck install.sh .ci/run scripts/*.sh scripts/chordctl
"$PY" -c "import app.cli, app.engine.transformers_engine" && echo "import smoke test OK"
"$ROOT/.venv/bin/lint-imports" --no-cache
"$PY" -m pytest "$@"
