#!/usr/bin/env bash
# What Supervisor runs as [program:chord-resources]: load the overrides `chordctl start` saved (so the
# resource log watches the same PORT and uses the same ALERT_* thresholds), then exec the resource log.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/chord_env.sh
. "$ROOT/scripts/chord_env.sh"
exec "$ROOT/.venv/bin/python" "$ROOT/scripts/resource_log.py" "$@"
