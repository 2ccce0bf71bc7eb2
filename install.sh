#!/usr/bin/env bash
# Chord installer: bash install.sh [options]. Idempotent; run it again to repair or update.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"
START=1
DEVICE=""
DEV=0

usage() {
  cat <<USAGE
Usage: bash install.sh [--no-start] [--device cpu|cuda|auto] [--dev] [--help]

  --no-start       install only; do not start the service
  --device D       DEVICE for the service it starts: cpu, cuda or auto (default: auto)
  --dev            also install the test and lint tools (requirements-dev.txt)
  --help           this text

Steps: check Python >= 3.10, create .venv, install requirements.txt (torch pinned),
install a CJK font for Chinese labels when apt-get is available.
USAGE
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --no-start) START=0 ;;
    --device) DEVICE="${2:?--device needs a value}"; shift ;;
    --dev) DEV=1 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

step() { printf '\n==> %s\n' "$*"; }

step "Checking Python (>= 3.10)"
"$PYTHON" - <<'PY'
import sys
if sys.version_info < (3, 10):
    sys.exit(f"Chord needs Python >= 3.10, found {sys.version.split()[0]}")
print(f"Python {sys.version.split()[0]} OK")
PY

step "Creating the virtual environment in $VENV"
if [[ ! -x "$VENV/bin/python" ]]; then
  "$PYTHON" -m venv "$VENV"
else
  echo "already there"
fi

step "Installing Python packages (torch is large: the first run takes a few minutes)"
"$VENV/bin/python" -m pip install --upgrade --progress-bar on pip >/dev/null
requirements="$ROOT/requirements.txt"
[[ $DEV -eq 1 ]] && requirements="$ROOT/requirements-dev.txt"
"$VENV/bin/python" -m pip install --progress-bar on -r "$requirements"

step "Installing a CJK font for Chinese labels"
if fc_path=$(ls /usr/share/fonts/truetype/wqy/wqy-microhei.ttc 2>/dev/null); then
  echo "found $fc_path"
elif command -v apt-get >/dev/null && [[ $(id -u) -eq 0 ]]; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null \
    || { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fonts-wqy-microhei >/dev/null; } \
    || echo "WARNING: could not install fonts-wqy-microhei; Chinese labels will be drawn as boxes"
else
  echo "WARNING: no CJK font and no root apt-get; install fonts-wqy-microhei (or Noto CJK) for Chinese labels"
fi

step "Checking the installation"
"$VENV/bin/python" -c "import torch, torchvision, transformers; print(f'torch {torch.__version__}, torchvision {torchvision.__version__}, transformers {transformers.__version__}, CUDA available: {torch.cuda.is_available()}')"

if [[ $START -eq 0 ]]; then
  step "Installed. Not starting (--no-start)."
  echo "Ground an image:  .venv/bin/python -m app ground IMAGE \"the white vase\" --out annotated.png"
  exit 0
fi
step "Installed."
echo "Ground an image:  .venv/bin/python -m app ground IMAGE \"the white vase\" --out annotated.png"
