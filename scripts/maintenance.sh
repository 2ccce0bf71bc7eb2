#!/usr/bin/env bash
# Chord's daily maintenance; safe to run again at any time (each step looks at the files as they are).
#
#   1. compress the log backups Supervisor rotated (logs/chord.log.1 -> logs/chord.log.1.<stamp>.gz), and
#      any live *.log larger than MAINT_ROTATE_MB (copied, compressed, then truncated)
#   2. delete rotated or compressed logs older than MAINT_LOG_DAYS days (the live *.log files stay)
#   3. delete Gradio's cached uploads and Chord's chord-video-*/chord-batch-* temp folders older than
#      MAINT_TEMP_HOURS hours
#   4. warn when the disk of logs/ or of the model has less than MAINT_MIN_FREE_PERCENT free
#   5. GET /health
#   6. say whether the hub has a newer revision of the model; "cannot check" when it cannot be reached
#
# Prints one line per action; exits 1 when a step warned (low disk, unhealthy), so a systemd timer shows
# the unit failed and cron mails the output, else 0. "cannot check" the model is not a warning.
# Scheduling: config/systemd/chord-maintenance.{service,timer}, or config/cron/chord-maintenance.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/chord_env.sh
. "$ROOT/scripts/chord_env.sh"

LOG_DIR="${MAINT_LOG_DIR:-$ROOT/logs}"          # the logs folder
LOG_DAYS="${MAINT_LOG_DAYS:-7}"                 # rotated logs older than this many days are deleted
ROTATE_MB="${MAINT_ROTATE_MB:-100}"             # a live *.log past this size is rotated here
TEMP_HOURS="${MAINT_TEMP_HOURS:-24}"            # temp files older than this many hours are deleted
MIN_FREE="${MAINT_MIN_FREE_PERCENT:-10}"        # warn below this much free disk, in percent
HEALTH_TIMEOUT="${MAINT_HEALTH_TIMEOUT:-10}"    # seconds for GET /health and for the hub
GRADIO_DIR="${GRADIO_TEMP_DIR:-${TMPDIR:-/tmp}/gradio}"
TEMP_ROOT="${TMPDIR:-/tmp}"
PY="$ROOT/.venv/bin/python"

warnings=0
say() { printf '%s maintenance: %s\n' "$(date '+%Y-%m-%dT%H:%M:%S%z')" "$*"; }
warn() { say "WARNING: $*"; warnings=$((warnings + 1)); }

for number in "$LOG_DAYS" "$ROTATE_MB" "$TEMP_HOURS" "$MIN_FREE" "$HEALTH_TIMEOUT"; do
  [[ "$number" =~ ^[0-9]+$ ]] || { say "MAINT_* values must be whole numbers, got '$number'"; exit 2; }
done

# Settings the server uses (config/chord.toml, then the environment): host, port and model folder.
read -r HOST PORT MODEL_DIR < <("$PY" -c '
from app.settings import load_settings
s = load_settings()
print(s.host or "127.0.0.1", s.port, s.resolved_model_path())' 2>/dev/null || echo "127.0.0.1 7860 -")
case "$HOST" in 0.0.0.0) HOST=127.0.0.1 ;; ::) HOST="[::1]" ;; esac

# 1. compress and rotate
compress_logs() {
  local file stamp size
  [[ -d "$LOG_DIR" ]] || { say "no logs folder $LOG_DIR"; return; }
  while IFS= read -r -d '' file; do  # Supervisor's backups: name.log.1 ... name.log.N
    stamp=$(date -r "$file" +%Y%m%d-%H%M%S)
    gzip -c -- "$file" >"$file.$stamp.gz.tmp"
    touch -r "$file" -- "$file.$stamp.gz.tmp"  # keeps the backup's age, for step 2
    mv -- "$file.$stamp.gz.tmp" "$file.$stamp.gz"
    rm -f -- "$file"
    say "compressed $(basename -- "$file") -> $(basename -- "$file").$stamp.gz"
  done < <(find "$LOG_DIR" -maxdepth 1 -type f -regex '.*\.log\.[0-9]+$' -print0)
  while IFS= read -r -d '' file; do  # a live log past the size: copy, compress, truncate
    size=$(stat -c %s -- "$file")
    stamp=$(date +%Y%m%d-%H%M%S)
    gzip -c -- "$file" >"$file.$stamp.gz"
    : >"$file"
    say "rotated $(basename -- "$file") ($((size / 1048576)) MB) -> $(basename -- "$file").$stamp.gz"
  done < <(find "$LOG_DIR" -maxdepth 1 -type f -name '*.log' -size +"${ROTATE_MB}M" -print0)
}

# 2. delete old logs: rotated (*.log.N) and compressed (*.gz) files only
delete_old_logs() {
  local file count=0
  [[ -d "$LOG_DIR" ]] || return 0
  while IFS= read -r -d '' file; do
    rm -f -- "$file"
    say "deleted $(basename -- "$file") (older than $LOG_DAYS days)"
    count=$((count + 1))
  done < <(find "$LOG_DIR" -maxdepth 1 -type f \( -name '*.gz' -o -regex '.*\.log\.[0-9]+$' \) \
    -mmin +$((LOG_DAYS * 1440)) -print0)
  say "old logs: $count deleted (kept: live *.log and anything newer than $LOG_DAYS days)"
}

# 3. temp files: Gradio's upload cache and Chord's own temp folders
clear_temp() {
  local count=0 path
  if [[ -d "$GRADIO_DIR" && "$GRADIO_DIR" != / ]]; then
    count=$(find "$GRADIO_DIR" -mindepth 1 -type f -mmin +$((TEMP_HOURS * 60)) -print -delete | wc -l)
    find "$GRADIO_DIR" -mindepth 1 -type d -empty -delete 2>/dev/null || true
  fi
  while IFS= read -r -d '' path; do
    rm -rf -- "$path"
    count=$((count + 1))
  done < <(find "$TEMP_ROOT" -maxdepth 1 -type d \( -name 'chord-video-*' -o -name 'chord-batch-*' \) \
    -mmin +$((TEMP_HOURS * 60)) -print0 2>/dev/null)
  say "temp files: $count deleted older than $TEMP_HOURS h (Gradio cache $GRADIO_DIR, $TEMP_ROOT/chord-*)"
}

# 4. disk
check_disk() {
  local folder free
  for folder in "$LOG_DIR" "$MODEL_DIR"; do
    [[ -e "$folder" ]] || continue
    free=$(df -P -- "$folder" | awk 'NR == 2 { sub("%", "", $5); print 100 - $5 }')
    if ((free < MIN_FREE)); then
      warn "low disk: $free % free on the disk of $folder (below $MIN_FREE %)"
    else
      say "disk: $free % free on the disk of $folder"
    fi
  done
}

# 5. health
check_health() {
  local url="http://$HOST:$PORT/health" code
  code=$(curl -s -o /dev/null --max-time "$HEALTH_TIMEOUT" -w '%{http_code}' "$url" || true)
  if [[ "$code" == 200 ]]; then
    say "health: $url answers 200"
  elif [[ -z "$code" || "$code" == 000 ]]; then
    warn "health: nothing answers $url (scripts/chordctl status; scripts/chordctl logs chord)"
  else
    warn "health: $url answers $code (scripts/chordctl health; scripts/chordctl logs chord)"
  fi
}

# 6. model update: the local revision (from huggingface_hub's download metadata) against the hub's main
check_model_update() {
  local repo="${MAINT_MODEL_REPO:-}" local_rev="" meta remote
  if [[ -z "$repo" && -d "$MODEL_DIR" && "$MODEL_DIR" == */models/* ]]; then
    repo="Qwen/$(basename -- "$MODEL_DIR")"  # scripts/download_model.sh's layout: models/<name> from Qwen/<name>
  fi
  if [[ -z "$repo" ]]; then
    say "model update: cannot check (no hub repository for $MODEL_DIR; set MAINT_MODEL_REPO)"
    return
  fi
  meta=$(find "$MODEL_DIR/.cache/huggingface/download" -name '*.metadata' -print -quit 2>/dev/null || true)
  [[ -n "$meta" ]] && local_rev=$(head -n 1 -- "$meta")
  if [[ "${HF_HUB_OFFLINE:-0}" == 1 ]]; then
    say "model update: cannot check $repo (HF_HUB_OFFLINE=1)"
    return
  fi
  remote=$(curl -fsS --max-time "$HEALTH_TIMEOUT" "${HF_ENDPOINT:-https://huggingface.co}/api/models/$repo/revision/main" \
    2>/dev/null | "$PY" -c 'import json, sys; print(json.load(sys.stdin)["sha"])' 2>/dev/null || true)
  if [[ -z "$remote" ]]; then
    say "model update: cannot check $repo (the hub cannot be reached)"
  elif [[ -z "$local_rev" ]]; then
    say "model update: $repo is at $remote on the hub; the local revision is unknown (not downloaded by download_model.sh)"
  elif [[ "$remote" == "$local_rev" ]]; then
    say "model update: $repo is up to date ($local_rev)"
  else
    say "model update: a newer revision of $repo exists ($remote; local $local_rev): scripts/download_model.sh $repo"
  fi
}

say "start (logs $LOG_DIR, keep $LOG_DAYS days)"
compress_logs
delete_old_logs
clear_temp
check_disk
check_health
check_model_update
say "done, $warnings warning(s)"
((warnings == 0))
