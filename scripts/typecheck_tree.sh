#!/usr/bin/env bash
# Lays out build/typecheck/lstm_serving as the package is installed (pyproject's package-dir),
# as links to the source folders, for mypy: it cannot follow setuptools' editable finder.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck/lstm_serving
rm -rf build/typecheck
mkdir -p "$tree"
for entry in service/*; do
    [ "$(basename "$entry")" = __pycache__ ] || ln -s "../../../$entry" "$tree/"
done
ln -s ../../../export "$tree/export"
ln -s ../../../proto/lstm "$tree/proto"
