#!/usr/bin/env bash
# What Supervisor runs: load the overrides `chordctl start` saved, then exec the server's keeper in
# place (it forks the serving process: docs/operations.md).
# Arguments go to `python -m app serve` (a replica gets --port, which beats PORT in run/chord.env);
# --run-dir is where `chordctl swap` leaves its requests for this server.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/chord_env.sh
. "$ROOT/scripts/chord_env.sh"
exec "$ROOT/.venv/bin/python" -m app serve --run-dir "$ROOT/run" "$@"
