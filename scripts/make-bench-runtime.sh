#!/usr/bin/env bash
# Build the interpreter the heavy reference functions run on: a Python 3.11 virtualenv with
# numpy, scipy and torch 2.13.0 (CPU). `snapfaas bench` and `snapfaas demo` pass it to the server
# as `--runtime python3.11=<dir>/bin/python`. Idempotent; fast when already built.
set -euo pipefail
dir=${1:-.bench-runtime/py311}
want="numpy==2.4.6 scipy torch==2.13.0"
if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c 'import numpy, scipy, torch' 2>/dev/null; then
  exit 0
fi
base=""
for candidate in python3.11 $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.11.*/bin/python3.11 2>/dev/null | sort -r); do
  if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys, venv; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
    base=$(command -v "$candidate"); break
  fi
done
if [ -z "$base" ]; then
  echo "make-bench-runtime: no working python3.11 (torch 2.13.0 CPU is provided for 3.11)" >&2
  exit 1
fi
echo "make-bench-runtime: creating $dir with $base (numpy, scipy, torch 2.13.0 CPU)"
rm -rf "$dir"
"$base" -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check $want
"$dir/bin/python" -c 'import numpy, scipy, torch; print("make-bench-runtime: numpy", numpy.__version__, "scipy", scipy.__version__, "torch", torch.__version__)'
