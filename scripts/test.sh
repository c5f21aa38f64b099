#!/usr/bin/env bash
# Set up everything the test suite needs on a fresh machine, then run it (under Xvfb,
# through pytest-xvfb). Extra arguments go to pytest, e.g. bash scripts/test.sh -m "not slow".
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
exec .venv/bin/python -m pytest "$@"
