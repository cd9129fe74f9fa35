#!/usr/bin/env bash
# Creates (or updates) the project environment: .venv with portraitflow and its test extras.
# insightface and scenedetect declare `opencv-python`, which would sit beside the headless build
# and break `import cv2` on servers, so they are installed without dependencies and their other
# requirements are listed here.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PYTHON:-python3.11}"
command -v "$PY" >/dev/null || PY=python3
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check -q -c jobs/constraints.txt)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" -e ".[test]"
"${PIP[@]}" --no-deps "insightface==2.1" "scenedetect==0.7.2"
"${PIP[@]}" tqdm requests platformdirs "click~=8.0"
"$VENV/bin/python" - <<'PY'
import importlib.metadata as md
others = [d.metadata["Name"] for d in md.distributions()
          if d.metadata["Name"].lower().startswith("opencv") and d.metadata["Name"].lower() != "opencv-python-headless"]
assert not others, f"only opencv-python-headless may be installed, found {others}"
import cv2, insightface, scenedetect, decord  # noqa: F401  the environment is whole
PY
echo "environment ready: $VENV"
