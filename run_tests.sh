#!/usr/bin/env bash
# The test command: sets up .venv from requirements.txt when needed, then runs the suite.
# Usage: bash run_tests.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")"
source ./setup_env.sh
export LINE_SHARED_DIR="${LINE_SHARED_DIR:-$(cd .. && pwd)/shared}"
exec python -m pytest -q "$@"
