#!/usr/bin/env bash
# Chord installer. One line:  bash install.sh   (or: curl -fsSL <raw url of install.sh> | bash)
# Idempotent: run it again to repair or update. See --help.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: bash install.sh [options]

  --model M          model to serve: a hub id (default Qwen/Qwen2.5-VL-7B-Instruct), a local
                     checkpoint directory, or "demo" (the bundled demo model)
  --demo             same as --model demo
  --source S         where to download from: huggingface (default) or modelscope
  --device D         cpu, cuda or auto (default auto)
  --port P           port to serve on (default from config/chord.toml: 7860)
  --flash-attn       also try to build flash-attn (CUDA only; failure is not fatal: sdpa is used)
  --system           also install a conf into the system Supervisor (/etc/supervisor/conf.d/chord.conf)
  --no-start         install only; do not start the service
  --dev              also install the test and lint tools (requirements-dev.txt)
  --uninstall        stop Chord and remove .venv, run/ and the system Supervisor conf (keeps models/)
  --help             this text

Steps: check Python >= 3.10, create .venv, install requirements.txt (torch pinned), a CJK font,
fetch the model, start Supervisor (server + watchdog), wait for /health, print the URL.
USAGE
}

# Piped from curl: no checkout around us; clone one and run its install.sh.
if [[ -z "${BASH_SOURCE[0]:-}" || ! -d "$(dirname "${BASH_SOURCE[0]}")/app" ]]; then
  : "${CHORD_REPO:?set CHORD_REPO to the git URL of Chord to install from a pipe}"
  dest="${CHORD_HOME:-$HOME/chord}"
  [[ -d "$dest/.git" ]] || git clone --depth 1 "$CHORD_REPO" "$dest"
  exec bash "$dest/install.sh" "$@"
fi

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
MODEL="Qwen/Qwen2.5-VL-7B-Instruct"
SOURCE="huggingface"
DEVICE=""
PORT=""
START=1 DEV=0 FLASH=0 SYSTEM=0 UNINSTALL=0

while [[ $# -gt 0 ]]; do
  case "$1" in
    --model) MODEL="${2:?--model needs a value}"; shift ;;
    --demo) MODEL=demo ;;
    --source) SOURCE="${2:?--source needs a value}"; shift ;;
    --device) DEVICE="${2:?--device needs a value}"; shift ;;
    --port) PORT="${2:?--port needs a value}"; shift ;;
    --flash-attn) FLASH=1 ;;
    --system) SYSTEM=1 ;;
    --no-start) START=0 ;;
    --dev) DEV=1 ;;
    --uninstall) UNINSTALL=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

step() { printf '\n==> %s\n' "$*"; }
loud() { printf '\n!!!!!!!!!!\n!!! %s\n!!!!!!!!!!\n' "$*"; }
SYSTEM_CONF=/etc/supervisor/conf.d/chord.conf

if [[ $UNINSTALL -eq 1 ]]; then
  step "Uninstalling Chord from $ROOT"
  if [[ -x "$VENV/bin/python" ]]; then "$ROOT/scripts/chordctl" stop || true; fi
  if [[ -f "$SYSTEM_CONF" ]]; then
    supervisorctl stop chord chord-watchdog >/dev/null 2>&1 || true
    rm -f "$SYSTEM_CONF"
    { supervisorctl reread && supervisorctl update; } >/dev/null 2>&1 || true
    echo "removed $SYSTEM_CONF"
  fi
  rm -rf "$VENV" "$ROOT/run"
  echo "removed .venv and run/; models/ and logs/ are kept"
  exit 0
fi

step "Checking Python (>= 3.10)"
"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"Chord needs Python >= 3.10, found {sys.version.split()[0]}")
print(f"Python {sys.version.split()[0]} OK")
PY

step "Creating the virtual environment in $VENV"
if [[ -x "$VENV/bin/python" ]]; then echo "already there"; else "$PYTHON" -m venv "$VENV"; fi

step "Installing Python packages (torch is large: the first run takes a few minutes)"
"$VENV/bin/python" -m pip install -q --upgrade pip
requirements="$ROOT/requirements.txt"
[[ $DEV -eq 1 ]] && requirements="$ROOT/requirements-dev.txt"
"$VENV/bin/python" -m pip install --progress-bar on -r "$requirements"

if [[ $FLASH -eq 1 ]]; then
  step "Building flash-attn (optional; needs CUDA and a compiler, can take a long time)"
  "$VENV/bin/python" -m pip install flash-attn --no-build-isolation \
    || loud "flash-attn did not build; Chord will use sdpa attention (this is fine)"
fi

step "Installing a CJK font for Chinese labels"
if [[ -f /usr/share/fonts/truetype/wqy/wqy-microhei.ttc ]]; then
  echo "already there"
elif command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
  export DEBIAN_FRONTEND=noninteractive
  { apt-get install -y -qq fonts-wqy-microhei >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null && apt-get install -y -qq fonts-wqy-microhei >/dev/null; }; } \
    && echo "installed fonts-wqy-microhei" \
    || echo "WARNING: could not install fonts-wqy-microhei; Chinese labels will be drawn as boxes"
else
  echo "WARNING: no CJK font and no root apt-get; install fonts-wqy-microhei for Chinese labels"
fi

step "Checking the installation"
"$VENV/bin/python" -c "import torch, torchvision, transformers; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}, CUDA available: {torch.cuda.is_available()}')"
mkdir -p "$ROOT/logs" "$ROOT/run" "$ROOT/models"

if [[ $START -eq 0 && $SYSTEM -eq 0 ]]; then
  step "Installed. Not starting (--no-start)."
  echo "Start later:  MODEL_PATH=<checkpoint> scripts/chordctl start"
  exit 0
fi

step "Fetching the model ($MODEL)"
MODEL_PATH=""
if [[ "$MODEL" == demo ]]; then
  MODEL_PATH=demo
elif [[ -d "$MODEL" ]]; then
  MODEL_PATH="$(cd "$MODEL" && pwd)"
  echo "using the local checkpoint $MODEL_PATH"
elif [[ -f "$ROOT/models/${MODEL##*/}/config.json" ]] && ls "$ROOT/models/${MODEL##*/}"/*.safetensors >/dev/null 2>&1; then
  MODEL_PATH="$ROOT/models/${MODEL##*/}"
  echo "already downloaded: $MODEL_PATH"
elif bash "$ROOT/scripts/download_model.sh" --source "$SOURCE" "$MODEL"; then
  MODEL_PATH="$ROOT/models/${MODEL##*/}"
elif [[ -f "$ROOT/app/demo_model/config.json" ]]; then
  loud "Could not download $MODEL. Starting on the bundled DEMO MODEL (synthetic shapes only). Once the network allows it: scripts/download_model.sh --source $SOURCE $MODEL && MODEL_PATH=models/${MODEL##*/} scripts/chordctl restart"
  MODEL_PATH=demo
else
  loud "Could not download $MODEL. Chord is installed but not started. Once the network allows it: scripts/download_model.sh --source $SOURCE $MODEL && MODEL_PATH=models/${MODEL##*/} scripts/chordctl start"
  exit 3
fi

overrides=(MODEL_PATH="$MODEL_PATH")
[[ -n "$DEVICE" ]] && overrides+=(DEVICE="$DEVICE")
[[ -n "$PORT" ]] && overrides+=(PORT="$PORT")

if [[ $SYSTEM -eq 1 ]]; then
  step "Installing the system Supervisor conf $SYSTEM_CONF"
  command -v supervisorctl >/dev/null || { apt-get install -y -qq supervisor >/dev/null || loud "install Debian's supervisor package first"; }
  env "${overrides[@]}" "$VENV/bin/python" "$ROOT/scripts/render_supervisor_conf.py" --root "$ROOT" >"$SYSTEM_CONF"
  supervisorctl reread && supervisorctl update
  echo "now: supervisorctl status chord"
  exit 0
fi

if [[ $START -eq 1 ]]; then
  step "Starting Chord under Supervisor"
  env "${overrides[@]}" "$ROOT/scripts/chordctl" start
  url="http://$(env "${overrides[@]}" "$VENV/bin/python" -c 'from app.settings import load_settings; s = load_settings(); print(("127.0.0.1" if s.host == "0.0.0.0" else s.host) + ":" + str(s.port))')"
  step "Waiting for $url/health (the model loads in the background)"
  for i in $(seq 1 600); do
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$url/health" || true)
    if [[ "$code" == 200 ]]; then
      step "Chord is up: open $url/ in a browser (API docs: $url/docs)"
      exit 0
    fi
    ((i % 10 == 0)) && echo "  still loading after ${i}s (HTTP ${code:-none}); logs: scripts/chordctl logs"
    if "$ROOT/scripts/chordctl" ctl status chord 2>/dev/null | grep -q FATAL; then
      loud "Chord failed to start; the cause is in logs/chord.log:"
      tail -n 20 "$ROOT/logs/chord.log" || true
      exit 1
    fi
    sleep 1
  done
  loud "Chord did not become healthy within 600 s; see scripts/chordctl logs"
  exit 1
fi
