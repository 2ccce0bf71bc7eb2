# shellcheck shell=bash
# Sourced, not run: export the settings `chordctl` saved in run/chord.env (ROOT must be set).
# The server, the watchdog, the resource log and the maintenance script all start with it, so they
# see the same MODEL_PATH, PORT, ... as each other.
if [[ -f "$ROOT/run/chord.env" ]]; then
  set -a
  # shellcheck disable=SC1091
  . "$ROOT/run/chord.env"
  set +a
fi
