#!/usr/bin/env bash
# The test suite once more, on the lowest versions setup.cfg allows (.ci/lowest-versions.txt), in a fresh virtual
# environment in a temporary folder that is removed at exit. Exits with pytest's status.
set -euo pipefail
cd "$(dirname "$0")/.."
constraints=.ci/lowest-versions.txt

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m venv "$tmp/venv"
python="$tmp/venv/bin/python"

# torch first and alone: 2.13.0 is the CPU build on this project's machines.
"$python" -m pip install -q torch==2.13.0
"$python" -m pip install -q -c "$constraints" -e ".[test]"

echo "lowest versions installed:"
names=$(sed -e 's/==.*//' -e 's/[-_]/[-_]/g' "$constraints" | paste -sd '|')
"$python" -m pip freeze --all | grep -iE "^($names)==" | sed 's/^/  /' || true

"$python" -m pytest -q
