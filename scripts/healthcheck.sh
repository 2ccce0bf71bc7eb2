#!/usr/bin/env bash
# Chord's health-and-restart loop, run by Supervisor as [program:chord-watchdog].
#
# Every WATCHDOG_INTERVAL seconds it asks GET /health (curl --max-time WATCHDOG_TIMEOUT), and asks
# Supervisor for the program's state only when the answer is not 200:
#   200                              healthy
#   503 "loading" within the grace   not a failure (the model is still loading)
#   refused within the grace         not a failure (the process has not bound its port yet)
#   503 "stalled"                    the server says its model made no progress for STALL_TIMEOUT_S while
#                                    work waited (a hung kernel, a stopped model process): restart at once
#   anything else, or a time-out     a failure (a hung process accepts the connection, then times out)
# After a failure the next check comes WATCHDOG_RECHECK seconds later, not a whole interval. After
# WATCHDOG_FAILURES failures in a row it kills the serving process (SIGKILL, by the pid its last
# healthy /health gave: a hung process would sit out a graceful stop) and the keeper that forked it
# (`python -m app serve`, Supervisor's process) forks a new one at once, its code already imported;
# with no pid known it kills the keeper (`supervisorctl signal KILL`) and Supervisor starts it again.
# A stalled model's serving process is killed the same way, by the pid in its "stalled" answer: what
# it holds cannot finish, and the keeper also ends the frozen model process it leaves behind.
# "Starting" (the grace below) is the serving process's age: the keeper's newest child, else the
# program's uptime. When Supervisor reports chord STOPPED, EXITED or FATAL (and no one paused the
# watchdog) it starts it again.
# A 503 "engine_unreachable" (ENGINE=openai, the engine server is down) is logged, not restarted;
# a 503 "swapping" (`chordctl swap --in-place` under way) is not a failure.
# At most WATCHDOG_MAX_RESTARTS restarts/starts per WATCHDOG_WINDOW seconds: past that it logs
# loudly and stops acting until the window frees up, so a crash loop does not flap forever.
# `touch run/watchdog.paused` pauses it (chordctl pause/resume), for deliberate maintenance.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 1
# shellcheck source=scripts/chord_env.sh
. "$ROOT/scripts/chord_env.sh"

INTERVAL="${WATCHDOG_INTERVAL:-1}"          # seconds between checks (a healthy check is one curl)
RECHECK="${WATCHDOG_RECHECK:-0}"            # seconds before the next check after a failed one
START_INTERVAL=2                            # extra seconds between checks while the server starts
TIMEOUT="${WATCHDOG_TIMEOUT:-2}"            # curl --max-time for one check (/health never waits for the model)
FAILURES="${WATCHDOG_FAILURES:-2}"          # failures in a row before a restart
GRACE="${WATCHDOG_GRACE:-600}"              # seconds after a start during which "loading" is fine
MAX_RESTARTS="${WATCHDOG_MAX_RESTARTS:-5}"  # restart budget ...
WINDOW="${WATCHDOG_WINDOW:-3600}"           # ... per this many seconds
PROGRAM="${1:-${WATCHDOG_PROGRAM:-chord}}"  # arguments: PROGRAM PORT (a replica's watchdog, chordctl replicas)
PAUSE_FILE="$ROOT/run/watchdog.paused"
CLOCK_TICKS=$(getconf CLK_TCK 2>/dev/null || echo 100)
read -r -a SUPERVISORCTL <<<"${SUPERVISORCTL:-$ROOT/.venv/bin/supervisorctl -c $ROOT/supervisor/supervisord.conf}"

log() { printf '%s watchdog: %s\n' "$(date '+%Y-%m-%dT%H:%M:%S%z')" "$*"; }

read -r HOST PORT < <("$ROOT/.venv/bin/python" -c \
  'from app.settings import load_settings; s = load_settings(); print(s.host, s.port)' 2>/dev/null || echo "127.0.0.1 7860")
[[ -n "${2:-}" ]] && PORT="$2"
case "$HOST" in 0.0.0.0|"") HOST=127.0.0.1 ;; ::) HOST="[::1]" ;; esac
URL="http://$HOST:$PORT/health"

failures=0
server_pid=""        # from the last healthy answer: a hung server is killed without a round trip to Supervisor
restarts=()          # epoch seconds of recent restarts
budget_warned=0
engine_warned=0

# Seconds the program has been up, from "RUNNING pid 1, uptime 1 day, 0:02:03"; empty if unknown.
uptime_seconds() {
  local line="$1" days=0 hms h m s
  [[ "$line" =~ uptime\ ([0-9]+)\ days?,\ ([0-9:]+) ]] && { days="${BASH_REMATCH[1]}"; hms="${BASH_REMATCH[2]}"; }
  [[ -z "${hms:-}" && "$line" =~ uptime\ ([0-9:]+) ]] && hms="${BASH_REMATCH[1]}"
  [[ -z "${hms:-}" ]] && return
  IFS=: read -r h m s <<<"$hms"
  echo $((days * 86400 + 10#$h * 3600 + 10#$m * 60 + 10#$s))
}

# True while the budget allows another restart; prunes restarts older than the window.
budget_allows() {
  local now kept=() t
  now=$(date +%s)
  for t in "${restarts[@]}"; do ((now - t < WINDOW)) && kept+=("$t"); done
  restarts=("${kept[@]}")
  if ((${#restarts[@]} >= MAX_RESTARTS)); then
    if ((budget_warned == 0)); then
      log "RESTART BUDGET EXHAUSTED: ${#restarts[@]} restarts in the last ${WINDOW}s (max $MAX_RESTARTS)." \
        "Not restarting $PROGRAM until the window frees up. Look at logs/chord.log and fix the cause."
      budget_warned=1
    fi
    return 1
  fi
  budget_warned=0
  return 0
}

act() {  # act start|kill REASON
  local verb="$1" reason="$2" command
  budget_allows || return
  restarts+=("$(date +%s)")
  log "$verb $PROGRAM ($reason); restart ${#restarts[@]} of $MAX_RESTARTS in ${WINDOW}s"
  case "$verb" in
    kill)  # the keeper forks a new serving process at once (or, killed itself, Supervisor restarts it)
      if [[ -z "$server_pid" ]] || ! kill -0 "$server_pid" 2>/dev/null; then
        server_pid=$(newest_child "$("${SUPERVISORCTL[@]}" status "$PROGRAM" 2>&1)")  # replaced since it answered
      fi
      if [[ -n "$server_pid" ]] && kill -KILL "$server_pid" 2>/dev/null; then
        log "killed pid $server_pid (the serving process; its keeper starts a new one)"
        server_pid=""  # never signal a pid that may be reused
        failures=0
        return
      fi
      command=(signal KILL "$PROGRAM")
      ;;
    *) command=("$verb" "$PROGRAM") ;;
  esac
  "${SUPERVISORCTL[@]}" "${command[@]}" 2>&1 | while read -r out; do log "supervisorctl: $out"; done
  server_pid=""
  failures=0
}

# The pid of the newest child of the keeper a status line names ("RUNNING pid 12, uptime ..."): its
# serving process. Empty if none. Read from /proc.
newest_child() {
  local children=()
  [[ "$1" =~ pid\ ([0-9]+) ]] || return 0
  read -r -a children 2>/dev/null <"/proc/${BASH_REMATCH[1]}/task/${BASH_REMATCH[1]}/children"
  ((${#children[@]})) && echo "${children[-1]}"
  return 0
}

# Seconds the serving process has been up (a replacement is as new as a fresh start), else the
# program's uptime from its status line; empty if unknown.
serving_seconds() {
  local child stat fields now
  child=$(newest_child "$1")
  if [[ -n "$child" ]] && read -r stat 2>/dev/null <"/proc/$child/stat"; then
    read -r -a fields <<<"${stat##*) }"  # fields[19] is starttime, in clock ticks after boot
    read -r now _ </proc/uptime
    echo $(( ${now%.*} - fields[19] / CLOCK_TICKS ))
    return
  fi
  uptime_seconds "$1"
}

log "watching $URL every ${INTERVAL}s (timeout ${TIMEOUT}s, restart after $FAILURES failures" \
  "${RECHECK}s apart, grace ${GRACE}s, budget $MAX_RESTARTS per ${WINDOW}s)"
while true; do
  if ((failures > 0)); then sleep "$RECHECK"; else sleep "$INTERVAL"; fi
  if [[ -e "$PAUSE_FILE" ]]; then
    continue
  fi
  # A healthy answer costs one curl; Supervisor is asked only when the answer is not 200.
  body=$(curl -s --max-time "$TIMEOUT" -w '\n%{http_code}' "$URL" 2>/dev/null)
  curl_status=$?
  code="${body##*$'\n'}"
  if [[ "$code" == 200 ]]; then
    [[ "$body" =~ \"pid\":([0-9]+) ]] && server_pid="${BASH_REMATCH[1]}"
    ((failures > 0)) && log "$PROGRAM healthy again after $failures failed checks"
    ((engine_warned)) && log "$PROGRAM: its engine is reachable again"
    failures=0
    engine_warned=0
    continue
  fi
  if ((curl_status == 28)); then  # it took the connection and did not answer in time: hung, whatever its state
    failures=$((failures + 1))
    log "health check failed ($failures/$FAILURES): no answer within ${TIMEOUT}s from $URL"
    ((failures >= FAILURES)) && act kill "$failures failed health checks in a row"
    continue
  fi
  status_line=$("${SUPERVISORCTL[@]}" status "$PROGRAM" 2>&1)
  state=$(awk '{print $2}' <<<"$status_line")
  case "$state" in
    STOPPED | EXITED | FATAL)
      act start "supervisor reports $state"
      continue
      ;;
    RUNNING | STARTING) ;;
    *)  # BACKOFF, STOPPING or supervisord unreachable: Supervisor is already acting
      failures=0
      continue
      ;;
  esac
  if [[ "$code" == 503 && "$body" == *'"stalled"'* ]]; then
    log "$PROGRAM reports its model stalled: ${body%$'\n'*}"
    [[ "$body" =~ \"pid\":([0-9]+) ]] && server_pid="${BASH_REMATCH[1]}"
    act kill "the model made no progress while work waited"
    continue
  fi
  if [[ "$code" == 503 && "$body" == *'"swapping"'* ]]; then
    continue  # `chordctl swap --in-place`: the old model is gone and the new one loading, on purpose
  fi
  if [[ "$code" == 503 && "$body" == *'"engine_unreachable"'* ]]; then
    # ENGINE=openai and the engine server is down: restarting Chord would not bring it back.
    ((engine_warned)) || log "$PROGRAM answers but its engine is unreachable; not restarting $PROGRAM (fix the engine)"
    engine_warned=1
    failures=0
    continue
  fi
  up=$(serving_seconds "$status_line")
  starting=0
  [[ "$state" == STARTING || ( -n "$up" && "$up" -lt "$GRACE" ) ]] && starting=1
  if ((starting)) && [[ ( "$code" == 503 && "$body" == *'"loading"'* ) || $curl_status -eq 7 ]]; then
    sleep "$START_INTERVAL"  # within the grace period: the port is not bound yet (curl 7) or the model is
    continue                 # loading; checked less often, so the checks do not slow the start down
  fi
  failures=$((failures + 1))
  log "health check failed ($failures/$FAILURES): HTTP ${code:-none} from $URL"
  if ((failures >= FAILURES)); then
    act kill "$failures failed health checks in a row"
  fi
done
