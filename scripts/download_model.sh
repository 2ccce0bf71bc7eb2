#!/usr/bin/env bash
# Download a model into models/<name>, resumably, with progress.
#
#   scripts/download_model.sh [--source huggingface|modelscope] [REPO_ID] [DEST_DIR]
#
# REPO_ID defaults to Qwen/Qwen2.5-VL-7B-Instruct, DEST_DIR to models/<name>. Re-running resumes
# an interrupted download. Exits 3, quickly, when the hub cannot be reached.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$ROOT/.venv/bin/python"
SOURCE="${MODEL_SOURCE:-huggingface}"
if [[ "${1:-}" == --source ]]; then
  SOURCE="${2:?--source needs huggingface or modelscope}"
  shift 2
fi
REPO_ID="${1:-Qwen/Qwen2.5-VL-7B-Instruct}"
DEST="${2:-$ROOT/models/${REPO_ID##*/}}"

case "$SOURCE" in
  huggingface) PROBE="${HF_ENDPOINT:-https://huggingface.co}/api/models/$REPO_ID" ;;
  modelscope) PROBE="https://www.modelscope.cn/api/v1/models/$REPO_ID" ;;
  *) echo "download_model.sh: unknown source $SOURCE (huggingface or modelscope)" >&2; exit 2 ;;
esac

echo "==> Checking that $SOURCE can be reached"
if ! curl -fsS --max-time 15 -o /dev/null "$PROBE"; then
  echo "download_model.sh: cannot reach $SOURCE ($PROBE)." >&2
  echo "Once the network allows it, run: scripts/download_model.sh --source $SOURCE $REPO_ID" >&2
  exit 3
fi

mkdir -p "$DEST"
echo "==> Downloading $REPO_ID from $SOURCE into $DEST (resumable: run again if interrupted)"
if [[ "$SOURCE" == huggingface ]]; then
  "$PY" - "$REPO_ID" "$DEST" <<'PY'
import sys

from huggingface_hub import snapshot_download

snapshot_download(repo_id=sys.argv[1], local_dir=sys.argv[2])
PY
else
  "$PY" -m pip install -q "modelscope==1.40.2"
  "$ROOT/.venv/bin/modelscope" download --model "$REPO_ID" --local_dir "$DEST"
fi
echo "==> Done: MODEL_PATH=$DEST"
