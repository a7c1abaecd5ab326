#!/usr/bin/env bash
# Create the project virtualenv with a Python >= 3.11 (python3 if new enough, else python3.11..3.13).
set -euo pipefail
venv=${1:-.venv}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  exit 0
fi
for candidate in python3 python3.11 python3.12 python3.13; do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "make-venv: creating $venv with $(command -v "$candidate")"
    "$candidate" -m venv "$venv"
    exit 0
  fi
done
echo "make-venv: no Python >= 3.11 found (install python3.11 or newer)" >&2
exit 1
