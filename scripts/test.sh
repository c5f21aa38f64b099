#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it (under Xvfb,
# through pytest-xvfb), then the Cellpose adapter tests against cellpose 4 in their own
# environment. Extra arguments go to the main pytest run, e.g. bash scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
status=0
.venv/bin/python -m pytest "$@" || status=$?
# The Cellpose adapter against cellpose 4 too, in its own small environment (the main one has 3.1).
bash scripts/test_cellpose4.sh -q || status=$?
exit $status
