#!/usr/bin/env bash
# Install snapfaas (editable) with its test extras into an existing venv: scripts/install-pydeps.sh VENV
#
# A fresh venv (a fresh clone, `make clean`) spent ~60 s in pip: fetching and parsing the index
# pages of ~100 distributions (botocore's lists thousands of releases) and resolving, before
# installing anything. The distributions pip resolves are kept as wheels in a wheelhouse in the
# user's cache, keyed by pyproject.toml, the interpreter and pip's configuration (indexes,
# constraints); a later install with the same key reads only that directory (--no-index). The
# wheelhouse is filled once by `pip wheel` (the same resolution an install makes; a distribution
# that comes as an sdist is built to a wheel, or taken from pip's wheel cache), under a temporary
# name renamed into place complete, so it is never partial; an install from it that fails falls
# back to the indexes.
set -euo pipefail
venv=${1:?usage: install-pydeps.sh VENV}
py="$venv/bin/python"
pip=("$py" -m pip --disable-pip-version-check)
quiet=(--quiet --no-compile)
key=$( { cat pyproject.toml; "$py" -c 'import sys; print(sys.version)'; "${pip[@]}" config list 2>/dev/null || true; } \
       | sha256sum | cut -c1-16)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/snapfaas/wheelhouse-$key"

if [ -f "$cache/.complete" ]; then
  if "${pip[@]}" install "${quiet[@]}" --no-index --find-links "$cache" -e '.[test]'; then
    exit 0
  fi
  echo "install-pydeps: installing from the wheelhouse $cache failed; installing from the package indexes" >&2
else
  staging="$cache.tmp-$$"
  rm -rf "$staging"
  mkdir -p "$staging"
  # the project's own wheel is not kept (it is installed editable from the work tree)
  if "${pip[@]}" wheel --quiet --wheel-dir "$staging" '.[test]' 'setuptools>=68' wheel \
      && rm -f "$staging"/snapfaas-*.whl \
      && "${pip[@]}" install "${quiet[@]}" --no-index --find-links "$staging" -e '.[test]'; then
    touch "$staging/.complete"
    mv -T "$staging" "$cache" 2>/dev/null || rm -rf "$staging"  # another install filled it first
    exit 0
  fi
  rm -rf "$staging"
  echo "install-pydeps: filling the wheelhouse failed; installing from the package indexes" >&2
fi
"${pip[@]}" install "${quiet[@]}" -e '.[test]'
