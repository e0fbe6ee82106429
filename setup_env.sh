#!/usr/bin/env bash
# Sourced by run_tests.sh, the demos and bootstrap.py: create .venv with requirements.txt once, then
# activate it. .venv/.installed is written only after every package installed, so a failed install
# is retried on the next run.
if [ ! -x .venv/bin/python ] || [ requirements.txt -nt .venv/.installed ]; then
    echo "setting up .venv from requirements.txt (first run: a few minutes)" >&2
    if ! { python3 -m venv .venv \
        && .venv/bin/python -m pip install -q --upgrade pip \
        && .venv/bin/python -m pip install -q -r requirements.txt; }; then
        echo "setup_env.sh: installing requirements.txt into .venv failed (see above)" >&2
        return 1 2>/dev/null || exit 1
    fi
    touch .venv/.installed
fi
source .venv/bin/activate
