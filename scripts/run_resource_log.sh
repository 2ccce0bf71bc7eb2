#!/usr/bin/env bash
# What Supervisor runs as [program:chord-resources]: load the overrides `chordctl start` saved (so the
# resource log watches the same PORT and uses the same ALERT_* thresholds), then exec the resource log.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -f "$ROOT/run/chord.env" ]]; then
  set -a
  # shellcheck disable=SC1091
  . "$ROOT/run/chord.env"
  set +a
fi
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/resource_log.py" "$@"
